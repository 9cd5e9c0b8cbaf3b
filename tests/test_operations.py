"""Running it as a service: the sidecar, exact metrics, the machine_id label guard, JSON logs."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from asr_server.engine.model_loading import DTYPES, native_bf16_flags, resolve_precision
from tests.harness import ServerProcess, wav_bytes

from .conftest import KEY, exchange, request

CAP = 100
TINY = wav_bytes(np.zeros(1600, dtype=np.int16), 16_000)  # 0.1 s of silence: the VAD skips the model


@pytest.fixture(scope="module")
def ops_server() -> Iterator[ServerProcess]:
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY, "METRICS_MAX_MACHINE_IDS": str(CAP),
           "LOG_FORMAT": "json"}
    with ServerProcess(env=env) as process:
        yield process


def scrape(server: ServerProcess) -> str:
    status, text = server.http_get("/metrics", server.metrics_port)
    assert status == 200
    return text


def machine_ids(text: str) -> set[str]:
    return {s.labels["machine_id"] for f in text_string_to_metric_families(text) for s in f.samples
            if "machine_id" in s.labels}


def test_sidecar_health_and_a_valid_exposition(ops_server: ServerProcess) -> None:
    assert ops_server.health(ops_server.metrics_port) == (200, {"status": "ok", "postprocess_enabled": False})
    assert ops_server.http_get("/nope", ops_server.metrics_port)[0] == 404
    reply = exchange(ops_server.url, request("en", machine_id="ABC123"), TINY).reply
    assert reply["text"] == ""
    text = scrape(ops_server)
    assert 'asr_requests_total{machine_id="abc123",status="ok",task="transcribe"} 1.0' in text
    assert 'asr_audio_seconds_total{machine_id="abc123",task="transcribe"} 0.1' in text
    assert 'asr_processing_seconds_count{machine_id="abc123",task="transcribe"} 1.0' in text
    precision = resolve_precision("auto", torch.device("cpu"), native_bf16_flags())  # what the server runs
    dtype = str(DTYPES[precision]).removeprefix("torch.")
    assert f'asr_model_info{{device="cpu",dtype="{dtype}",name="base",precision="{precision}"}} 1.0' in text
    assert "asr_model_load_seconds " in text and "asr_ready 1.0" in text
    assert "asr_queue_depth 0.0" in text and "asr_inflight_requests 0.0" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_pings_are_not_counted(ops_server: ServerProcess) -> None:
    before = scrape(ops_server)
    for _ in range(3):
        assert exchange(ops_server.url, {"type": "ping"}).reply["type"] == "pong"
    after = scrape(ops_server)
    counts = [re.findall(r"^asr_requests_total\{.*$", t, re.M) for t in (before, after)]
    assert counts[0] == counts[1]


def test_one_json_log_line_per_request_without_secrets(ops_server: ServerProcess) -> None:
    mark = len(ops_server.lines)
    exchange(ops_server.url, request("en", machine_id="feed01"), TINY)
    exchange(ops_server.url, request("en", api_key="nope-key-31337", machine_id="feed02"), TINY)
    ops_server.wait_for_line('"error": "unauthorized"', after=mark)
    entries = [json.loads(line) for line in ops_server.lines if line.startswith("{")]
    assert len(entries) == len(ops_server.lines), "every line is JSON"
    requests = [e for e in entries if e["message"] == "request"]
    ok = next(e for e in requests if e["machine_id"] == "feed01")
    assert {"request_id", "machine_id", "task", "language", "audio_s", "processing_ms", "status",
            "error"} <= set(ok)
    assert (ok["task"], ok["language"], ok["audio_s"], ok["status"], ok["error"]) == (
        "transcribe", "en", 0.1, "ok", None)
    refused = [e for e in requests if e["error"] == "unauthorized"]
    assert refused and refused[-1]["machine_id"] == "unauthenticated" and refused[-1]["status"] == "error"
    assert "nope-key-31337" not in "\n".join(ops_server.lines) and KEY not in "\n".join(ops_server.lines)


def test_the_label_guard_holds_1000_ids_to_the_cap(ops_server: ServerProcess) -> None:
    def send(i: int) -> str:
        return str(exchange(ops_server.url, request("en", machine_id=f"{i:032x}"), TINY).reply["text"])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, range(1_000, 2_000))) == [""] * 1_000
    ids = machine_ids(scrape(ops_server))
    assert len(ids) <= CAP + 3, len(ids)
    assert "other" in ids
    # An unauthenticated request with a new id adds no label value.
    assert exchange(ops_server.url, request("en", api_key="wrong", machine_id="d00d"), TINY
                    ).reply["error"] == "unauthorized"
    assert machine_ids(scrape(ops_server)) == ids
