"""The WebSocket transport: one exchange per connection on ``/ws/transcribe``; ``/health`` and the page.

metadata frame -> key check -> audio frame -> the service (decode, scheduler,
post-processing) -> result frame -> close 1000. Only the I/O is here: errors
raised below become an error frame and a close code here; the service logs
and counts each request once, whatever the outcome.

Before the key check a connection is one of at most ``MAX_PENDING_CONNECTIONS``
and its reads are gated (``websocket_gate``): the server holds its metadata
frame and one socket read, and reads its audio only once the key has passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from asr_server.admission import Allowance, client_address
from asr_server.contract import frames
from asr_server.contract.domain import TranscribeOptions, Transcription
from asr_server.contract.errors import (
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    AsrError,
    AudioTooLarge,
    BadRequest,
    InternalError,
    Overloaded,
    Unauthorized,
)
from asr_server.service import CLIENT_GONE, CUT_BY_SHUTDOWN, AsrService, RequestRecord
from asr_server.transports.page import PAGE_PATHS, load_page
from asr_server.transports.websocket_gate import GatedConnection

log = logging.getLogger(__name__)

WS_PATH = "/ws/transcribe"
HEALTH_PATH = "/health"


class ClientGone(Exception):
    """The client closed the connection before its result was ready."""


class WebSocketTransport:
    """Serves ``/ws/transcribe``, ``/health`` and the page (``page``) for one service."""

    def __init__(self, service: AsrService) -> None:
        self.service = service
        self.config = service.config
        self.page = load_page()
        self.live_port: int | None = None  # the HTTP port, once it listens: the page's Live mode

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None
        if path == HEALTH_PATH:
            status, body = self.service.health()
            response = connection.respond(status, json.dumps(body) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if path in PAGE_PATHS:
            return self.page.respond(connection, self.live_port)
        return connection.respond(404, "not found\n")

    def listen(self) -> Any:
        """The websockets server, not yet awaited (``await`` it to start listening)."""
        return serve(
            self.handle,
            self.config.host,
            self.config.port,
            process_request=self.process_request,
            create_connection=GatedConnection,
            compression=None,  # WAV does not compress, and deflate invites decompression bombs
            max_size=frames.MAX_METADATA_BYTES,  # until auth; then MAX_AUDIO_BYTES (open_gate)
            max_queue=2,  # two frames make a request; more only buffers memory
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header=None,
        )

    async def handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, GatedConnection)  # listen() makes every connection one
        ws = connection
        service = self.service
        record = RequestRecord()
        peer = str(ws.remote_address[0]) if ws.remote_address else "-"
        forwarded = ws.request.headers.get_all("X-Forwarded-For") if ws.request else []
        address = client_address(peer, forwarded, self.config.trusted_proxies)
        if refusal := service.admit(address, before_key=True):
            record.status = Overloaded.code
            await _fail(ws, Overloaded(refusal))
            service.record(record)
            return
        service.open_connections += 1
        try:
            await self._exchange(ws, record, address)
        except AsrError as err:
            record.status = err.code
            await _fail(ws, err)
        except (ConnectionClosed, ClientGone):
            record.status = self._gone_status(ws)
        except Exception:
            log.exception("request %s failed", record.request_id)
            record.status = "internal_error"
            await _fail(ws, InternalError("unexpected server error"))
        finally:
            service.open_connections -= 1
            service.leave(address, record, before_key=True)

    def _gone_status(self, ws: ServerConnection) -> str:
        """Why an exchange ended without a frame of ours: from the close frame the library sent, if any."""
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == CLOSE_TOO_BIG:  # a frame over max_size
            return AudioTooLarge.code
        if self.service.draining and sent is not None and sent.code == CloseCode.GOING_AWAY:
            return CUT_BY_SHUTDOWN
        return CLIENT_GONE

    async def _exchange(self, ws: GatedConnection, record: RequestRecord, address: str) -> None:
        frame = await ws.receive(self.config.metadata_timeout_s, "no metadata frame")
        obj = frames.parse_metadata(frame)
        if frames.is_ping(obj):
            record.kind = "ping"
            ws.discard_data()
            await ws.send(frames.pong_frame())
            await ws.close(CLOSE_NORMAL)
            return
        if not self.service.allows(frames.api_key(obj)):
            raise Unauthorized("missing or wrong api_key")
        record.authenticated = True
        self.service.key_passed(address)
        request = frames.parse_transcribe(obj)
        record.machine_id = request.machine_id
        record.task, record.language = request.task, request.language or "detect"
        allowance = self.service.allowance()
        try:
            transcription = await self._receive_and_transcribe(ws, record, request, allowance)
        finally:
            allowance.release()
        record.language = transcription.language or record.language
        corrected = await self.service.postprocess(transcription, request.postprocess, request.task, record)
        await ws.send(frames.result_frame(transcription, corrected))
        await ws.close(CLOSE_NORMAL)

    async def _receive_and_transcribe(self, ws: GatedConnection, record: RequestRecord,
                                      request: frames.TranscribeRequest, allowance: Allowance
                                      ) -> Transcription:
        """Frame 2, held within the audio budget from its header until the transcript is ready."""
        # The frame's declared size is reserved before its payload is read (websocket_gate).
        ws.open_gate(self.config.effective_max_audio_bytes, allowance.hold)
        log.debug("request %s: metadata accepted, waiting for audio", record.request_id)
        data = await ws.receive(self.config.audio_timeout_s, "no audio frame")
        record.audio_arrived = time.monotonic()
        if isinstance(data, str):
            raise BadRequest("the second frame must be a binary frame holding a WAV file")
        audio = await self.service.decode(data, record, allowance)
        del data
        options = TranscribeOptions(language=request.language, task=request.task,
                                    prompt=request.prompt, word_timestamps=request.word_timestamps)
        return await self._transcribe(ws, audio.samples, options)

    async def _transcribe(self, ws: ServerConnection, samples: Any, options: TranscribeOptions
                          ) -> Transcription:
        """The service's answer, given up (queue place, gate job and decode freed) if the client leaves."""
        work = asyncio.ensure_future(self.service.transcribe(samples, options))
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await asyncio.wait({work, closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # this handler was cancelled: its request goes with it
            work.cancel()
            raise
        finally:
            closed.cancel()
        if not work.done():  # the client left first
            work.cancel()
            raise ClientGone()
        return work.result()


async def _fail(ws: GatedConnection, err: AsrError) -> None:
    """Send the error frame and close with the error's code; the client may already be gone."""
    ws.discard_data()  # whatever the client still sends is dropped, but its close frame
    try:
        await ws.send(frames.error_frame(err))
        await ws.close(err.close_code, err.code)
    except ConnectionClosed:
        pass
