"""The bad-input corpus: what clients in the field send, each case with the exact answer it must get.

Every case runs against the real server (the strict one: 20 s / 2 MB of
audio, 1 s timeouts, a queue of one). ``Expect`` states the error code and the
close code, or a result (decodable but odd audio: silence gives ``text ""``
without running the model), or a bare close (1009 from the library). After
the corpus the server must still be healthy and transcribe a real clip.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness import EVAL_DIR, ServerProcess, wait_until, wait_until_async, wav_bytes

from .conftest import STRICT_MAX_BYTES, STRICT_MAX_SECONDS, exchange, request
from .wavcraft import ALAW, EXTENSIBLE, GSM610, IMA_ADPCM, MPEG_LAYER3, MULAW, float_wav, riff

JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"
SILENCE = wav_bytes(np.zeros(8_000, dtype=np.float32), 16_000)


@dataclass(frozen=True)
class Expect:
    error: str | None  # None: a result frame
    close_code: int
    frames: int = 1  # 0: the library closes without a frame


def error(code: str, close_code: int) -> Expect:
    return Expect(code, close_code)


BAD_REQUEST = error("bad_request", 1008)
UNAUTHORIZED = error("unauthorized", 1008)
UNSUPPORTED = error("unsupported_language", 1008)
INVALID_AUDIO = error("invalid_audio", 1007)
RESULT = Expect(None, 1000)

# name -> (frames sent back to back, expected answer)
CORPUS: dict[str, tuple[tuple[str | bytes | dict[str, Any], ...], Expect]] = {
    # frames out of order, wrong frame types
    "audio first": ((SILENCE,), BAD_REQUEST),
    "audio first then metadata": ((SILENCE, request("en")), BAD_REQUEST),
    "metadata twice": ((request("en"), request("en")), BAD_REQUEST),
    "text as audio": ((request("en"), "RIFF....WAVE"), BAD_REQUEST),
    "binary metadata holding JSON": ((json.dumps(request("en")).encode(),), BAD_REQUEST),
    # malformed or oversized JSON
    "empty text frame": (("",), BAD_REQUEST),
    "not JSON": (("hello server",), BAD_REQUEST),
    "truncated JSON": (('{"type": "transcribe", "language": "e',), BAD_REQUEST),
    "JSON array": (("[1, 2, 3]",), BAD_REQUEST),
    "JSON string": (('"transcribe"',), BAD_REQUEST),
    "JSON number": (("42",), BAD_REQUEST),
    "JSON null": (("null",), BAD_REQUEST),
    "nested 100000 deep": (("[" * 100_000 + "]" * 100_000,), BAD_REQUEST),
    "metadata over 64 KiB": ((request("en", pad="x" * 70_000),), BAD_REQUEST),
    "no type": (({"language": "en"},), BAD_REQUEST),
    "unknown type": (({"type": "transcribe_fast"},), BAD_REQUEST),
    "type as number": (({"type": 1},), BAD_REQUEST),
    "type as list": (({"type": ["transcribe"]},), BAD_REQUEST),
    # wrong field types, unknown fields
    "language as number": (({**request(), "language": 7}, SILENCE), BAD_REQUEST),
    "language as list": (({**request(), "language": ["en"]}, SILENCE), BAD_REQUEST),
    "language NaN": ((json.dumps(request(None)).replace("null", "NaN"), SILENCE), BAD_REQUEST),
    "language unknown": ((request("xx"), SILENCE), UNSUPPORTED),
    "language Whisper knows but we do not": ((request("zh"), SILENCE), UNSUPPORTED),
    "language 10 kB long": ((request("e" * 10_000), SILENCE), UNSUPPORTED),
    "task unknown": ((request("en", task="summarize"), SILENCE), BAD_REQUEST),
    "task as number": ((request("en", task=1), SILENCE), BAD_REQUEST),
    "postprocess as string": ((request("en", postprocess="yes"), SILENCE), BAD_REQUEST),
    "api_key missing": (({"type": "transcribe", "language": "en"}, SILENCE), UNAUTHORIZED),
    "api_key wrong": ((request("en", api_key="not-the-key"), SILENCE), UNAUTHORIZED),
    "api_key as number": ((request("en", api_key=12345), SILENCE), UNAUTHORIZED),
    "api_key as list": ((request("en", api_key=[request()["api_key"]]), SILENCE), UNAUTHORIZED),
    "api_key with NUL": ((request("en", api_key=request()["api_key"] + "\x00"), SILENCE), UNAUTHORIZED),
    "machine_id as object (telemetry only)": ((request("en", machine_id={"a": 1}), SILENCE), RESULT),
    "machine_id 100 kB is cut by the metadata cap": ((request("en", machine_id="m" * 100_000),), BAD_REQUEST),
    "unknown fields ignored": ((request("en", colour="blue", nested={"a": [1, None]}), SILENCE), RESULT),
    "a third frame after the audio": ((request("en"), SILENCE, "extra"), RESULT),
    "ping with unknown fields": (({"type": "ping", "x": 1},), Expect(None, 1000)),
    # WAV malformations
    "empty audio frame": ((request("en"), b""), INVALID_AUDIO),
    "5 bytes": ((request("en"), b"RIFF\x00"), INVALID_AUDIO),
    "header and 0 samples": ((request("en"), riff(b"")), INVALID_AUDIO),
    "1 sample": ((request("en"), riff(b"\x10\x00")), RESULT),
    "cut inside the header": ((request("en"), riff()[:30]), INVALID_AUDIO),
    "data cut short (size says more)": ((request("en"), riff(data_size=320_000)), RESULT),
    "RIFF size lies (huge)": ((request("en"), riff(riff_size=0xFFFFFFF0)), RESULT),
    "RIFF size lies (zero)": ((request("en"), riff(riff_size=0)), RESULT),
    "data size lies (4 GiB)": ((request("en"), riff(data_size=0xFFFFFFFF)), RESULT),
    "no fmt chunk": ((request("en"), riff(with_fmt=False)), INVALID_AUDIO),
    "no data chunk": ((request("en"), riff(with_data=False)), INVALID_AUDIO),
    "fmt chunk 2 bytes": ((request("en"), riff(fmt_size=2)), INVALID_AUDIO),
    "fmt size lies (2 GiB)": ((request("en"), riff(fmt_size=0x7FFFFFFF)), INVALID_AUDIO),
    "chunk size lies (4 GiB)": ((request("en"), riff(extra_chunks=b"LIST\x00\xff\xff\xffabcd")),
                                INVALID_AUDIO),
    "RIFF but AVI": ((request("en"), riff(form=b"AVI ")), INVALID_AUDIO),
    "RIFX (big-endian)": ((request("en"), riff(magic=b"RIFX")), INVALID_AUDIO),
    "A-law": ((request("en"), riff(b"\x55" * 1600, fmt_tag=ALAW, bits=8)), INVALID_AUDIO),
    "mu-law": ((request("en"), riff(b"\x55" * 1600, fmt_tag=MULAW, bits=8)), INVALID_AUDIO),
    "IMA ADPCM": ((request("en"), riff(fmt_tag=IMA_ADPCM, bits=4)), INVALID_AUDIO),
    "MP3 in WAV": ((request("en"), riff(fmt_tag=MPEG_LAYER3, bits=0)), INVALID_AUDIO),
    "GSM 6.10": ((request("en"), riff(fmt_tag=GSM610, bits=0)), INVALID_AUDIO),
    "unknown codec 0x1234": ((request("en"), riff(fmt_tag=0x1234)), INVALID_AUDIO),
    "extensible, garbage GUID": ((request("en"), riff(fmt_tag=EXTENSIBLE, fmt_size=40)), INVALID_AUDIO),
    "0 bits per sample": ((request("en"), riff(bits=0)), INVALID_AUDIO),
    "64-bit integer PCM": ((request("en"), riff(b"\x00" * 800, bits=64)), INVALID_AUDIO),
    "sample rate 0": ((request("en"), riff(rate=0)), INVALID_AUDIO),
    "sample rate 4 kHz": ((request("en"), riff(rate=4_000)), INVALID_AUDIO),
    "sample rate 1 MHz": ((request("en"), riff(rate=1_000_000)), INVALID_AUDIO),
    "sample rate 2^32-1": ((request("en"), riff(rate=0xFFFFFFFF)), INVALID_AUDIO),
    "0 channels": ((request("en"), riff(channels=0)), INVALID_AUDIO),
    "300 channels": ((request("en"), riff(b"\x00\x00" * 3000, channels=300)), INVALID_AUDIO),
    "65535 channels": ((request("en"), riff(channels=65535)), INVALID_AUDIO),
    "8-bit unsigned PCM": ((request("en"), riff(b"\x80" * 8000, bits=8)), RESULT),
    "NaN samples": ((request("en"), float_wav(np.full(1600, np.nan, np.float32))), INVALID_AUDIO),
    "inf samples": ((request("en"), float_wav(np.full(1600, -np.inf, np.float32))), INVALID_AUDIO),
    "float samples of 1e30": ((request("en"), float_wav(np.full(1600, 1e30, np.float32))), RESULT),
    # other containers
    "Ogg": ((request("en"), b"OggS" + bytes(200)), INVALID_AUDIO),
    "FLAC": ((request("en"), b"fLaC" + bytes(200)), INVALID_AUDIO),
    "MP3 with ID3": ((request("en"), b"ID3\x04" + bytes(200)), INVALID_AUDIO),
    "WebM": ((request("en"), b"\x1aE\xdf\xa3" + bytes(200)), INVALID_AUDIO),
    "AIFF": ((request("en"), b"FORM" + bytes(200)), INVALID_AUDIO),
    "random bytes": ((request("en"), bytes(range(256)) * 8), INVALID_AUDIO),
    # limits
    f"over max_size ({STRICT_MAX_BYTES} bytes)": ((request("en"), bytes(STRICT_MAX_BYTES + 1)),
                                                  Expect(None, 1009, frames=0)),
    "longer than MAX_AUDIO_SECONDS": ((request("en"), riff(bytes(32_000 * (STRICT_MAX_SECONDS + 1)))),
                                      error("audio_too_long", 1009)),
    "metadata, then nothing": ((request("en"),), error("timeout", 1008)),
    "nothing at all": ((), error("timeout", 1008)),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_corpus(strict_server: ServerProcess, name: str) -> None:
    frames, expected = CORPUS[name]
    result = exchange(strict_server.url, *frames, timeout_s=60)
    assert len(result.replies) == expected.frames, result.replies
    assert result.close_code == expected.close_code, (result.close_code, result.close_reason)
    if expected.frames:
        reply = result.replies[0]
        if expected.error:
            assert reply["error"] == expected.error and isinstance(reply["detail"], str), reply
            assert set(reply) == {"error", "detail"}
        else:
            assert "error" not in reply, reply


def when_free(url: str, *frames: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """The reply, once the strict server's queue of one has room: ``overloaded`` is its right answer
    while work sent just before still waits in it."""
    def served() -> dict[str, Any] | None:
        reply = exchange(url, *frames).reply
        return None if reply.get("error") == "overloaded" else reply

    reply: dict[str, Any] = wait_until(served, 120, "room in the strict server's queue", interval_s=0.25)
    return reply


def test_slow_senders(strict_server: ServerProcess) -> None:
    """A fragmented frame is fine while it arrives within AUDIO_TIMEOUT_S; a trickle past it is cut off."""
    def fragments(data: bytes, pieces: int, pause_s: float) -> Any:
        step = len(data) // pieces + 1
        for start in range(0, len(data), step):
            yield data[start:start + step]
            # The pace of the sender is what is under test: a real sleep between fragments.
            time.sleep(pause_s)

    # 4 fragments in 0.2 s: within the 1 s timeout; 40 in 4 s: past it.
    for pieces, pause_s, expected, close_code in ((4, 0.05, {"text": ""}, 1000),
                                                  (40, 0.1, {"error": "timeout"}, 1008)):
        with connect(strict_server.url, max_size=None) as ws:
            ws.send(json.dumps(request("en")))
            try:
                ws.send(fragments(SILENCE, pieces, pause_s))
            except ConnectionClosed:
                pass
            try:
                reply = json.loads(ws.recv(timeout=30))
            except ConnectionClosed:
                reply = {}  # no answer at all: fails below for either case
        assert reply.items() >= expected.items(), reply
        assert ws.close_code == close_code, (pieces, ws.close_code)


def test_a_client_gone_mid_inference_costs_nothing_else(strict_server: ServerProcess) -> None:
    mark = len(strict_server.lines)
    for _ in range(3):
        with connect(strict_server.url, max_size=None) as ws:
            ws.send(json.dumps(request("en")))
            ws.send(JFK.read_bytes())
        # closed before the result: the server must notice, log it, and go on
    strict_server.wait_for_line("error=client_gone", timeout_s=60, after=mark)
    assert "country" in when_free(strict_server.url, request("en"), JFK.read_bytes())["text"]


def test_500_idle_connections_at_once(strict_server: ServerProcess) -> None:
    """Each idle connection is answered ``timeout`` and closed; a real client is served meanwhile."""
    opened: list[int] = []

    async def scenario() -> tuple[list[Any], dict[str, Any]]:
        async def idle() -> Any:
            async with async_connect(strict_server.url, open_timeout=60) as ws:
                opened.append(1)
                return json.loads(await asyncio.wait_for(ws.recv(), 60)), ws

        idlers = [asyncio.create_task(idle()) for _ in range(500)]
        # The real client starts while the server holds idle connections (each for its 1 s
        # metadata timeout) and the rest are still arriving.
        await wait_until_async(lambda: len(opened) >= 100, 60, "100 idle connections open")
        served = await asyncio.to_thread(when_free, strict_server.url, request("en"), SILENCE)
        return await asyncio.gather(*idlers), served

    started = time.monotonic()
    idled, served = asyncio.run(scenario())
    assert "error" not in served, served
    assert [reply["error"] for reply, _ in idled] == ["timeout"] * 500
    assert all(ws.close_code == 1008 for _, ws in idled)
    assert time.monotonic() - started < 60  # closed in bounded time, not left open


def test_after_the_corpus_the_server_is_healthy_and_correct(strict_server: ServerProcess) -> None:
    assert strict_server.health() == (200, {"status": "ok", "postprocess_enabled": False})
    assert strict_server.proc is not None and strict_server.proc.poll() is None
    reply = exchange(strict_server.url, request("en"), JFK.read_bytes()).reply
    assert "ask not what your country can do for you" in reply["text"].lower()
