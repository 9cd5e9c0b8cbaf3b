"""The frame scanner behind the pre-auth gate, without sockets: boundaries, sizes, where a scan may stop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from asr_server.transports.websocket_gate import FrameScanner, Piece


def wire(*frames: Frame) -> bytes:
    return b"".join(frame.serialize(mask=True, extensions=[]) for frame in frames)


def scan(scanner: FrameScanner, data: bytes, chunk: int) -> list[tuple[Piece, bytes, int | None]]:
    out = []
    for i in range(0, len(data), chunk):
        for kind, piece, header in scanner.pieces(data[i:i + chunk]):
            out.append((kind, bytes(piece), header.length if header else None))
    return out


METADATA = Frame(Opcode.TEXT, b'{"type": "transcribe", "api_key": "k"}')
AUDIO = Frame(Opcode.BINARY, b"RIFF" + b"\x00" * 70_000)


@settings(deadline=None, max_examples=40)  # a 1-byte chunking scans 70 kB a byte at a time
@given(st.integers(min_value=1, max_value=70_100))
def test_the_pieces_are_the_stream_in_any_chunking(chunk: int) -> None:
    data = wire(METADATA, Frame(Opcode.PING, b"hi"), AUDIO)
    pieces = scan(FrameScanner(), data, chunk)
    assert b"".join(piece for _kind, piece, _ in pieces) == data
    ends = [i for i, (kind, _, _) in enumerate(pieces) if kind is Piece.MESSAGE_END]
    assert len(ends) == 2  # the ping is not a data message
    headers = [length for kind, _, length in pieces if kind is Piece.HEADER]
    assert headers == [len(METADATA.data), 2, len(AUDIO.data)]


def test_a_scan_stopped_at_a_message_end_resumes_on_the_rest_as_it_came() -> None:
    audio = wire(AUDIO)  # masked with a random key: serialised once
    data = wire(METADATA) + audio
    scanner = FrameScanner()
    for kind, _piece, _header in scanner.pieces(data):
        if kind is Piece.MESSAGE_END:
            break
    rest = data[scanner.position:]
    assert rest == audio
    resumed = [(kind, length) for kind, _, length in scan(scanner, rest, 4096) if kind is not Piece.PAYLOAD]
    assert resumed == [(Piece.HEADER, len(AUDIO.data)), (Piece.MESSAGE_END, len(AUDIO.data))]


def test_the_declared_size_of_a_message_is_known_at_each_header_before_its_payload() -> None:
    fragments = wire(Frame(Opcode.BINARY, b"a" * 300, fin=False), Frame(Opcode.CONT, b"b" * 70_000))
    scanner = FrameScanner()
    sizes = [scanner.message_bytes for kind, _, _ in scanner.pieces(fragments) if kind is Piece.HEADER]
    assert sizes == [300, 70_300]
    assert scanner.message_bytes == 0  # the message ended


def test_a_header_split_across_reads_is_held_whole_and_given_once() -> None:
    data = wire(Frame(Opcode.BINARY, b"x" * 100_000))  # 2 + 8 + 4 bytes of header
    scanner = FrameScanner()
    first = list(scanner.pieces(data[:5]))
    assert first == []  # nothing of a header leaves the scanner until it is whole
    second = [(kind, bytes(piece)) for kind, piece, _ in scanner.pieces(data[5:20])]
    assert second[0] == (Piece.HEADER, data[:14])
    assert second[1] == (Piece.PAYLOAD, data[14:20])
