"""What a client without a key can make the server hold: its metadata and one socket read, no more.

The attackers here speak WebSocket over raw sockets (a frame header that
declares 160 MB, then the payload streamed from one zero buffer: a zero mask
key leaves it as it is), so the test itself holds a few MB, not 60 x 160 MB.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as async_connect

from tests.conftest import KEY, exchange, request
from tests.harness import EVAL_DIR, ServerProcess, process_memory_mb, wait_until, wait_until_async

JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"
ATTACKERS = 60
ATTACK_FRAME_BYTES = 160_000_000
BLOCK = bytes(1 << 20)


def frame_header(opcode: int, length: int) -> bytes:
    """A masked client frame header with a zero mask key (RFC 6455 5.2)."""
    if length < 126:
        size = bytes([0x80 | length])
    elif length < 1 << 16:
        size = bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        size = bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + size + b"\x00\x00\x00\x00"


async def raw_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws/transcribe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  ).encode())
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer


async def attack(port: int) -> bytes:
    """A wrong key and, back to back, a 160 MB binary frame; returns the server's first bytes."""
    reader, writer = await raw_open(port)
    metadata = json.dumps({"type": "transcribe", "language": "en", "api_key": "wrong"}).encode()
    writer.write(frame_header(0x1, len(metadata)) + metadata + frame_header(0x2, ATTACK_FRAME_BYTES))
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        for _ in range(ATTACK_FRAME_BYTES // len(BLOCK)):
            writer.write(BLOCK)
            await writer.drain()
            if answer.done() and not answer.result():
                break
    except ConnectionError:
        pass  # the server closed the connection under the frame: what a refused client gets
    finally:
        writer.close()
    return await answer


def unmasked_text(data: bytes) -> str:
    """The first (unmasked, server-sent) frame's text."""
    size = data[1] & 0x7F
    start = 2 if size < 126 else 4
    if size == 126:
        size = int.from_bytes(data[2:4], "big")
    return data[start:start + size].decode()


def metric(server: ServerProcess, name: str, label: str = "") -> float:
    """The sum of a metric's samples whose labels hold ``label``."""
    status, body = server.http_get("/metrics", server.metrics_port)
    assert status == 200
    total = 0.0
    for match in re.finditer(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", body, re.M):
        if label in (match[1] or ""):
            total += float(match[2])
    return total


class PeakRss:
    """The server's resident memory, peak and now: its kernel high-water mark, reset at the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.before = process_memory_mb(pid)

    @property
    def peak(self) -> float:
        return process_memory_mb(self.pid, "VmHWM")

    @property
    def now(self) -> float:
        return process_memory_mb(self.pid)


@pytest.fixture(scope="module")
def keyed_server(server: ServerProcess) -> ServerProcess:
    """The session's server: keys, greedy, ``MAX_PENDING_CONNECTIONS=256`` (tests/conftest.py)."""
    return server


def test_60_unauthenticated_160_mb_frames_cost_at_most_300_mb(keyed_server: ServerProcess) -> None:
    assert keyed_server.proc is not None
    refused_before = metric(keyed_server, "asr_requests_total", 'status="unauthorized"')
    rss = PeakRss(keyed_server.proc.pid)

    async def burst() -> list[bytes]:
        return await asyncio.gather(*(attack(keyed_server.port) for _ in range(ATTACKERS)))

    answers = asyncio.run(burst())
    assert all(json.loads(unmasked_text(a))["error"] == "unauthorized" for a in answers), answers[:3]
    peak_growth = rss.peak - rss.before
    # Every attacker's request has been counted: the connections are over on the server's side too.
    wait_until(lambda: metric(keyed_server, "asr_requests_total", 'status="unauthorized"')
               >= refused_before + ATTACKERS, 60, "every attacker's request counted")
    time.sleep(5)  # not a wait for a state: the figure is what is still held 5 s after
    held = rss.now - rss.before
    print(f"RSS before {rss.before:.0f} MB, peak +{peak_growth:.0f} MB, 5 s after +{held:.0f} MB")
    assert peak_growth <= 300, (rss.before, rss.peak)
    assert held <= 150, (rss.before, rss.now)
    assert keyed_server.health() == (200, {"status": "ok", "postprocess_enabled": False})
    reply = exchange(keyed_server.url, request("en"), JFK.read_bytes()).reply
    assert "ask not what your country can do for you" in reply["text"].lower()


def test_200_silent_connections_do_not_keep_a_real_client_out(keyed_server: ServerProcess) -> None:
    async def scenario() -> dict[str, object]:
        silent = [await raw_open(keyed_server.port) for _ in range(200)]
        try:
            await wait_until_async(lambda: metric(keyed_server, "asr_pending_connections") >= 200,
                                   60, "200 connections pending")
            return await asyncio.to_thread(lambda: exchange(keyed_server.url, request("en"),
                                                            JFK.read_bytes()).reply)
        finally:
            for _reader, writer in silent:
                writer.close()

    reply = asyncio.run(scenario())
    assert "ask not what your country can do for you" in str(reply["text"]).lower()


def test_past_the_pending_cap_a_connection_is_overloaded_until_one_leaves() -> None:
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY, "METADATA_TIMEOUT_S": "120",
           "MAX_PENDING_CONNECTIONS": "4"}
    with ServerProcess(env=env) as server:
        async def scenario() -> tuple[str, int | None, dict[str, object]]:
            silent = [await raw_open(server.port) for _ in range(4)]
            await wait_until_async(lambda: metric(server, "asr_pending_connections") >= 4, 60,
                                   "4 connections pending")
            async with async_connect(server.url) as ws:
                refused = json.loads(await ws.recv())
                await ws.wait_closed()
            silent.pop()[1].close()
            await wait_until_async(lambda: metric(server, "asr_pending_connections") <= 3, 60,
                                   "a pending connection counted out")
            served = await asyncio.to_thread(lambda: exchange(server.url, request("en"),
                                                              JFK.read_bytes()).reply)
            for _reader, writer in silent:
                writer.close()
            return refused["error"], ws.close_code, served

        error, close_code, served = asyncio.run(scenario())
        assert (error, close_code) == ("overloaded", 1013)
        assert "ask not what your country" in str(served["text"]).lower()


def test_the_spec_javascript_way_of_sending_still_works_with_a_key(keyed_server: ServerProcess) -> None:
    """Metadata and audio back to back, on one raw write: the audio waits behind the gate, then is read."""
    async def scenario() -> dict[str, object]:
        reader, writer = await raw_open(keyed_server.port)
        metadata = json.dumps(request("en")).encode()
        wav = JFK.read_bytes()
        writer.write(frame_header(0x1, len(metadata)) + metadata + frame_header(0x2, len(wav)) + wav)
        data = await reader.read(2)
        size = data[1] & 0x7F
        extra = {126: 2, 127: 8}.get(size, 0)
        length_bytes = await reader.readexactly(extra)
        length = int.from_bytes(length_bytes, "big") if extra else size
        payload = await reader.readexactly(length)
        writer.close()
        return dict(json.loads(payload))

    reply = asyncio.run(scenario())
    assert "ask not what your country can do for you" in str(reply["text"]).lower()
