"""SIGTERM under load: health turns 503, new connections are refused, accepted requests finish, exit 0.

Also the sd_notify protocol that ``Type=notify`` relies on, through a real
datagram socket standing where systemd's would.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.harness import EVAL_DIR, ServerProcess

from .conftest import exchange, request

CLIP = EVAL_DIR / "en" / "en_fleurs_002.wav"
IN_FLIGHT = 12  # more than ASR_MAX_BATCH (8): some run, the rest wait in the queue


def inflight(server: ServerProcess) -> float:
    text = server.http_get("/metrics", server.metrics_port)[1]
    match = re.search(r"^asr_inflight_requests (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def test_sigterm_with_twelve_requests_in_flight(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "NOTIFY_SOCKET": str(notify_path),
           "SHUTDOWN_GRACE_S": "120"}
    with ServerProcess(env=env) as server:
        assert notify.recv(100) == b"READY=1"
        results: list[dict[str, object]] = []

        def client() -> None:
            results.append(exchange(server.url, request("en"), CLIP.read_bytes()).reply)

        threads = [threading.Thread(target=client) for _ in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while inflight(server) < IN_FLIGHT:
            assert time.monotonic() < deadline, "the requests never were in flight together"
            time.sleep(0.05)

        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
        assert server.health(server.metrics_port) == (503, {"status": "draining"})
        with pytest.raises(OSError):  # the listener is closed: refused, not queued
            with connect(server.url, open_timeout=5):
                pass

        for thread in threads:
            thread.join(120)
        assert len(results) == IN_FLIGHT  # a batch running, a batch queued: none lost
        assert all("the" in str(r.get("text", "")).lower() for r in results), results
        assert len({str(r["text"]) for r in results}) == 1
        assert server.proc.wait(60) == 0
    notify.close()
