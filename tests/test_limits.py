"""Admission limits (client address behind proxies, connection caps, audio budget): sans-I/O, then real."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asr_server.admission import AudioBudget, ConnectionLimiter, client_address
from asr_server.config import Config, ConfigError, parse_networks
from tests.harness import EVAL_DIR, ServerProcess, wait_until, wav_bytes

from .conftest import exchange

PROXIES = parse_networks("10.0.0.0/8, ::1")


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    assert client_address("203.0.113.9", ["198.51.100.1"], PROXIES) == "203.0.113.9"  # not a proxy
    assert client_address("10.1.2.3", ["198.51.100.1"], PROXIES) == "198.51.100.1"
    assert client_address("10.1.2.3", [], PROXIES) == "10.1.2.3"
    # A client prepends a spoofed hop; only what the trusted proxies appended counts.
    assert client_address("10.1.2.3", ["1.2.3.4, 198.51.100.1"], PROXIES) == "198.51.100.1"
    # Two trusted proxies in a chain, headers split over two lines.
    assert client_address("::1", ["198.51.100.7", "10.9.9.9"], PROXIES) == "198.51.100.7"
    assert client_address("10.1.2.3", ["garbage"], PROXIES) == "10.1.2.3"
    assert client_address("::ffff:10.1.2.3", ["198.51.100.1"], PROXIES) == "198.51.100.1"
    assert client_address("10.1.2.3", ["198.51.100.1"], ()) == "10.1.2.3"  # off by default


def test_connection_caps_total_and_per_address() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_address=2)
    assert limiter.admit("a") is None and limiter.admit("a") is None
    assert "your address" in (limiter.admit("a") or "")
    assert limiter.admit("b") is None
    assert "3 connections" in (limiter.admit("c") or "")
    limiter.release("a")
    assert limiter.admit("c") is None and limiter.total == 3
    unlimited = ConnectionLimiter()
    assert all(unlimited.admit("a") is None for _ in range(10_000))


def test_audio_budget_holds_and_releases() -> None:
    budget = AudioBudget(1000)
    first, second = budget.allowance(), budget.allowance()
    assert first.hold(600) and not second.hold(500) and second.held == 0
    assert first.hold(300)  # the decoded samples replace the frame
    assert second.hold(700) and budget.exhausted
    first.release()
    second.release()
    assert budget.held_bytes == 0 and not budget.exhausted


def test_limit_settings() -> None:
    config = Config.from_env({"MAX_CONNECTIONS": "500", "MAX_CONNECTIONS_PER_IP": "20",
                              "TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8", "HOST": "127.0.0.1"})
    assert (config.max_connections, config.max_connections_per_ip) == (500, 20)
    assert [str(n) for n in config.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert Config().max_connections == 0 and Config().trusted_proxies == ()
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"TRUSTED_PROXIES": "10.0.0.300", "MAX_INFLIGHT_AUDIO_BYTES": "2000000",
                         "HOST": "127.0.0.1"})
    assert len(caught.value.problems) == 2
    assert "TRUSTED_PROXIES" in caught.value.problems[0] and "MAX_INFLIGHT" in caught.value.problems[1]


# The same limits on the real server.

LIMITED_KEY = "limits-key-19ab"
JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"


@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerProcess]:
    # DEBUG: the audio budget test waits for the line saying a request's audio is decoded.
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": LIMITED_KEY, "MAX_CONNECTIONS": "4",
           "MAX_CONNECTIONS_PER_IP": "2", "TRUSTED_PROXIES": "127.0.0.1",
           "MAX_AUDIO_BYTES": str(1 << 20), "MAX_INFLIGHT_AUDIO_BYTES": str(2 << 20), "LOG_LEVEL": "DEBUG"}
    with ServerProcess(env=env) as process:
        yield process


def ping(url: str, forwarded_for: str) -> dict[str, Any]:
    with connect(url, additional_headers={"X-Forwarded-For": forwarded_for}) as ws:
        try:
            ws.send(json.dumps({"type": "ping"}))
        except ConnectionClosed:
            pass  # refused at once: the error frame is already waiting
        reply: dict[str, Any] = json.loads(ws.recv(timeout=30))
        return reply


def test_connection_caps_on_the_server(limited_server: ServerProcess) -> None:
    url = limited_server.url
    with ExitStack() as idle:
        for address in ("198.51.100.1", "198.51.100.1"):
            idle.enter_context(connect(url, additional_headers={"X-Forwarded-For": address}))
        refused = ping(url, "198.51.100.1")  # a third from the same client, behind the trusted proxy
        assert refused["error"] == "overloaded" and "your address" in refused["detail"]
        assert ping(url, "198.51.100.2") == {"type": "pong", "status": "ok"}  # another client
        idle.enter_context(connect(url, additional_headers={"X-Forwarded-For": "198.51.100.2"}))
        idle.enter_context(connect(url, additional_headers={"X-Forwarded-For": "198.51.100.3"}))
        full = ping(url, "198.51.100.4")
        assert full["error"] == "overloaded" and "4 connections" in full["detail"]
    # The closes are counted out a moment after the client sees them: the address is let in again.
    wait_until(lambda: ping(url, "198.51.100.1").get("type") == "pong", 10,
               "the closed connections to be counted out")


def test_audio_in_flight_is_bounded(limited_server: ServerProcess) -> None:
    samples, rate = sf.read(JFK, dtype="float32")
    speech = soxr.resample(np.concatenate([samples, samples]), rate, 16_000)[: 16_000 * 20]
    wav = wav_bytes(speech, 16_000)  # 640 kB; decoded, 1.28 MB of the 2 MiB budget
    meta = {"type": "transcribe", "language": "en", "api_key": LIMITED_KEY}
    mark = len(limited_server.lines)
    with connect(limited_server.url, max_size=None) as first:
        first.send(json.dumps(meta))
        first.send(wav)
        # Logged once the WAV is decoded; the server holds the samples in the budget before its
        # event loop runs anything else, so the second request below meets a budget in use.
        limited_server.wait_for_line(" Hz, 1 channels, ", timeout_s=60, after=mark)
        second = exchange(limited_server.url, meta, wav)
        assert second.reply["error"] == "overloaded" and "audio in flight" in second.reply["detail"]
        assert second.close_code == 1013
        assert "country" in json.loads(first.recv(timeout=300))["text"]
    third = exchange(limited_server.url, meta, wav)  # the budget was given back
    assert "country" in third.reply["text"]


def test_unauthenticated_clients_cause_no_model_work_and_no_series(limited_server: ServerProcess) -> None:
    def metrics() -> str:
        return limited_server.http_get("/metrics", limited_server.metrics_port)[1]

    def batches(text: str) -> str:
        return re.findall(r"^asr_batch_size_count (\S+)$", text, re.M)[0]

    before = metrics()
    for i in range(20):
        meta = {"type": "transcribe", "language": "en", "api_key": f"guess-{i}", "machine_id": f"{i:08x}"}
        assert exchange(limited_server.url, meta, JFK.read_bytes()).reply["error"] == "unauthorized"
    after = metrics()
    assert batches(after) == batches(before)
    labels = set(re.findall(r'machine_id="([^"]*)"', after))
    assert not any(f"{i:08x}" in labels for i in range(20)) and "unauthenticated" in labels
