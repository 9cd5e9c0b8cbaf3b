"""What a WebSocket client can make the server hold: nothing past its metadata until it has passed auth.

websockets reads every frame into memory as it arrives, so a client that
sends its metadata and its audio back to back (the spec's JavaScript client
does) would have its audio read before the key in its metadata is checked.
``GatedConnection`` stands between the socket and the library's parser and
feeds the library whole frames only when the exchange allows them:

- ``GATED`` (before auth): the first data message, at most
  ``MAX_METADATA_BYTES``, then nothing. The bytes that came with it stay as
  they arrived (at most one socket read) and the socket is not read again.
- ``OPEN`` (after auth): everything; before a data frame's payload is read,
  its declared size is reserved with the server's audio budget, and a frame
  the budget cannot hold is refused before a byte of it is buffered.
- ``DISCARD`` (refused, or the server has closed): control frames only, so a
  close handshake still completes; data frames are read and dropped.

``FrameScanner`` finds the frame boundaries (RFC 6455 section 5.2) without
buffering payloads, and knows nothing of sockets. This is the one module that
reaches into websockets' connection internals (``data_received``, the
protocol's ``state`` and ``max_message_size``, the transport's flow control);
the version check below names the releases it was written against.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State
from websockets.version import version as websockets_version

from asr_server.contract.errors import AsrError, BadRequest, InternalError, Overloaded, RequestTimeout
from asr_server.contract.frames import MAX_METADATA_BYTES

SUPPORTED_WEBSOCKETS_MAJOR = (16, 17)
if int(websockets_version.split(".")[0]) not in SUPPORTED_WEBSOCKETS_MAJOR:
    raise ImportError(f"asr_server.transports.websocket_gate was written for websockets "
                      f"{SUPPORTED_WEBSOCKETS_MAJOR}, "
                      f"not {websockets_version}: check GatedConnection against its connection code")

DATA_OPCODES = (0x0, 0x1, 0x2)  # continuation, text, binary
# What one connection may keep of a client's bytes while its gate is shut: the read that
# brought the metadata's end (asyncio reads at most 256 KiB at a time) and a little slack.
MAX_HELD_BYTES = 512 * 1024


@dataclass(frozen=True)
class FrameHeader:
    opcode: int
    fin: bool
    length: int  # payload bytes

    @property
    def is_data(self) -> bool:
        return self.opcode in DATA_OPCODES


class Piece(enum.Enum):
    HEADER = "header"  # a whole frame header
    PAYLOAD = "payload"  # payload bytes of the current frame
    MESSAGE_END = "message end"  # the last frame of a data message has ended (no bytes)


class FrameScanner:
    """Splits a client's byte stream into frame headers and payload runs, holding at most one header."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._left = 0  # payload bytes of the current frame not yet seen
        self._current: FrameHeader | None = None
        self.message_bytes = 0  # declared payload of the data message in progress, all its frames
        self.position = 0

    def pieces(self, data: bytes) -> Iterator[tuple[Piece, memoryview, FrameHeader | None]]:
        """The pieces of ``data`` in order; ``position`` is how far into ``data`` the scan stands.

        A consumer may stop after a ``MESSAGE_END``: the scan then stands on a frame
        boundary, and ``data[position:]`` can be scanned later, as it came.
        """
        view = memoryview(data)
        i = self.position = 0
        while i < len(view):
            if self._left:
                n = min(self._left, len(view) - i)
                self._left -= n
                i = self.position = i + n
                yield Piece.PAYLOAD, view[i - n:i], self._current
                if not self._left:
                    yield from self._frame_ended()
                continue
            self._header.append(view[i])
            i = self.position = i + 1
            needed = _header_length(self._header)
            if needed is None or len(self._header) < needed:
                continue
            header = _parse_header(self._header)
            raw = bytes(self._header)
            self._header.clear()
            self._current, self._left = header, header.length
            if header.is_data:
                self.message_bytes += header.length
            yield Piece.HEADER, memoryview(raw), header
            if not self._left:
                yield from self._frame_ended()

    def _frame_ended(self) -> Iterator[tuple[Piece, memoryview, FrameHeader | None]]:
        header = self._current
        if header is not None and header.is_data and header.fin:
            self.message_bytes = 0
            yield Piece.MESSAGE_END, memoryview(b""), header


def _header_length(header: bytearray) -> int | None:
    if len(header) < 2:
        return None
    size = header[1] & 0x7F
    return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if header[1] & 0x80 else 0)


def _parse_header(header: bytearray) -> FrameHeader:
    size = header[1] & 0x7F
    if size == 126:
        size = int.from_bytes(header[2:4], "big")
    elif size == 127:
        size = int.from_bytes(header[2:10], "big")
    return FrameHeader(opcode=header[0] & 0x0F, fin=bool(header[0] & 0x80), length=size)


class Mode(enum.Enum):
    GATED = "gated"
    OPEN = "open"
    DISCARD = "discard"


Reserve = Callable[[int], bool]


class GatedConnection(ServerConnection):
    """A server connection whose reads follow the exchange (see the module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate_mode = Mode.GATED
        self._scanner = FrameScanner()
        self._held = bytearray()
        self._reading_paused = False
        self._reserve: Reserve = lambda n_bytes: True
        self._max_message_bytes = MAX_METADATA_BYTES
        self._refusal: asyncio.Future[AsrError] = self.loop.create_future()

    # The handler's side.

    def open_gate(self, max_message_bytes: int, reserve: Reserve) -> None:
        """Auth passed: read on, up to ``max_message_bytes`` a message, each data frame ``reserve``d first."""
        self.protocol.max_message_size = self._max_message_bytes = max_message_bytes
        self._reserve = reserve
        self._switch(Mode.OPEN)

    def discard_data(self) -> None:
        """From now on take only control frames (the close handshake); drop whatever else comes."""
        if self.gate_mode is not Mode.DISCARD:
            self._switch(Mode.DISCARD)

    async def receive(self, timeout_s: float, what: str) -> str | bytes:
        """The next message, or the refusal that stopped it, or ``timeout`` after ``timeout_s``."""
        message = asyncio.ensure_future(self.recv())
        waits: set[asyncio.Future[Any]] = {message, self._refusal}
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise RequestTimeout(f"{what} within {timeout_s:g} s") from None
        finally:
            if not message.done():
                message.cancel()
        if message.done() and not message.cancelled():
            return message.result()  # may raise ConnectionClosed
        raise self._refusal.result()

    # The socket's side.

    def data_received(self, data: bytes) -> None:
        if self.protocol.state is State.CONNECTING:  # the HTTP handshake: the library bounds it
            super().data_received(data)
            return
        if self._reading_paused:  # bytes already on their way when reading was paused
            self._hold(data)
            return
        self._admit(data)

    def _admit(self, data: bytes) -> None:
        accepted = bytearray()
        scanner = self._scanner
        for kind, chunk, header in scanner.pieces(data):
            is_data = header is not None and header.is_data
            if self.gate_mode is Mode.GATED:
                if kind is Piece.MESSAGE_END:  # the metadata is in: hold the rest, read no more until auth
                    self._pause()
                    self._held += data[scanner.position:]
                    break
                if kind is Piece.HEADER and is_data and scanner.message_bytes > MAX_METADATA_BYTES:
                    self._refuse(BadRequest(f"metadata frame is larger than {MAX_METADATA_BYTES} bytes"))
            elif self.gate_mode is Mode.OPEN and kind is Piece.HEADER and is_data \
                    and scanner.message_bytes <= self._max_message_bytes \
                    and not self._reserve(scanner.message_bytes):  # (a larger one: the library's 1009)
                self._refuse(Overloaded("the server holds its limit of audio in flight; try again shortly"))
            if self.gate_mode is Mode.DISCARD and is_data:
                continue
            accepted += chunk
        if accepted:
            super().data_received(bytes(accepted))

    def _switch(self, mode: Mode) -> None:
        self.gate_mode = mode
        held, self._held = bytes(self._held), bytearray()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        if held:
            self._admit(held)

    def _refuse(self, error: AsrError) -> None:
        self.gate_mode = Mode.DISCARD
        if not self._refusal.done():
            self._refusal.set_result(error)

    def _hold(self, data: bytes) -> None:
        self._held += data
        if len(self._held) > MAX_HELD_BYTES:  # a transport that kept reading after its pause
            self._refuse(InternalError("the server could not hold back the client's data before auth"))
            self._switch(Mode.DISCARD)

    def _pause(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
