"""Every request is counted with its real status, also when it ends without an error frame of ours."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading

from tests.conftest import STRICT_MAX_BYTES, exchange, request
from tests.harness import EVAL_DIR, ServerProcess, wait_until
from tests.test_preauth import frame_header, raw_open

LONG = EVAL_DIR / "long" / "en_ljspeech_LJ001-0001_to_0032_concat.wav"


def requests_with_status(server: ServerProcess, status: str) -> float:
    body = server.http_get("/metrics", server.metrics_port)[1]
    pattern = rf'^asr_requests_total\{{[^}}]*status="{status}"[^}}]*\}} (\S+)$'
    return sum(float(m[1]) for m in re.finditer(pattern, body, re.M))


def test_a_frame_over_max_size_counts_as_audio_too_large(strict_server: ServerProcess) -> None:
    before = requests_with_status(strict_server, "audio_too_large")
    gone = requests_with_status(strict_server, "client_gone")
    result = exchange(strict_server.url, request("en"), b"RIFF" + bytes(STRICT_MAX_BYTES + 10))
    assert result.replies == [] and result.close_code == 1009  # the library's close, as before
    wait_until(lambda: requests_with_status(strict_server, "audio_too_large") == before + 1, 30,
               "the request counted as audio_too_large")
    assert requests_with_status(strict_server, "client_gone") == gone  # no longer counted so


def test_a_request_cut_by_the_grace_period_counts_as_shutdown() -> None:
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "SHUTDOWN_GRACE_S": "0.5", "LOG_LEVEL": "DEBUG"}
    with ServerProcess(env=env) as server:
        result: list[object] = []
        client = threading.Thread(target=lambda: result.append(
            exchange(server.url, {"type": "transcribe", "language": "en"}, LONG.read_bytes())))
        client.start()
        server.wait_for_line("metadata accepted", timeout_s=60)
        server.wait_for_line(" Hz, ", timeout_s=60)  # the audio is decoded: it is being transcribed
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        client.join(120)
        assert server.proc.wait(60) == 0
        line = server.wait_for_line("error=shutdown", timeout_s=5)
        assert "status=error" in line
    (cut,) = result
    assert cut.close_code == 1001 and cut.replies == []  # type: ignore[attr-defined]


def test_a_frame_declared_over_max_size_and_the_budget_is_still_audio_too_large(
        strict_server: ServerProcess) -> None:
    """The budget is not asked for a frame the library refuses anyway: 1009, not overloaded."""
    async def scenario() -> bytes:
        reader, writer = await raw_open(strict_server.port)
        metadata = json.dumps(request("en")).encode()
        writer.write(frame_header(0x1, len(metadata)) + metadata + frame_header(0x2, 1 << 31))
        closing = await reader.read(64)  # the library's close frame: no payload was needed
        writer.close()
        return closing

    before = requests_with_status(strict_server, "audio_too_large")
    closing = asyncio.run(scenario())
    assert closing[0] == 0x88 and int.from_bytes(closing[2:4], "big") == 1009, closing
    wait_until(lambda: requests_with_status(strict_server, "audio_too_large") == before + 1, 30,
               "the request counted as audio_too_large")
