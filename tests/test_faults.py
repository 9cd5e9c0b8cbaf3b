"""``internal_error``: a fault no real part can be made to produce on demand, injected by a named double.

``FaultInjectingEngine`` stands in for the engine and raises the way a GPU
out of memory does. The server, scheduler and sockets around it are real.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import connect

from asr_server.config import Config
from asr_server.engine.scheduler import Scheduler
from asr_server.metrics import Metrics
from asr_server.postprocess.llm_client import PostProcessor
from asr_server.service import AsrService
from asr_server.transports.websocket import WebSocketTransport
from tests.harness import ServerProcess, wav_bytes

from .conftest import exchange


class FaultInjectingEngine:
    """Fault double: every transcription fails as CUDA does when it runs out of memory."""

    def __init__(self) -> None:
        self.calls = 0

    def serve(self, source: Any, capacity: int, observe_pass: Callable[[int], None]) -> None:
        while (job := source.next(block=True)) is not None:
            self.calls += 1
            job.settle(None, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)"))


def test_an_engine_fault_is_internal_error_and_the_server_goes_on() -> None:
    async def scenario() -> None:
        engine = FaultInjectingEngine()
        scheduler = Scheduler(lambda: engine, max_queue=4)
        scheduler.start()
        await scheduler.wait_ready()
        metrics = Metrics(CollectorRegistry(), machine_id_cap=10)
        config = Config(host="127.0.0.1", port=0)
        server = AsrService(config, scheduler, metrics, PostProcessor.from_config(config))
        async with WebSocketTransport(server).listen() as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/ws/transcribe"
            for _ in range(2):
                async with async_connect(url) as ws:
                    await ws.send(json.dumps({"type": "transcribe", "language": "en"}))
                    await ws.send(wav_bytes(np.zeros(1600, dtype=np.float32), 16_000))
                    reply = json.loads(await ws.recv())
                    await ws.wait_closed()
                assert reply["error"] == "internal_error"
                assert "CUDA" not in reply["detail"]  # internals stay in the log
                assert ws.close_code == 1011
            async with async_connect(url) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await ws.recv())["type"] == "pong"
            assert scheduler.alive and server.health()[0] == 200
        await scheduler.stop()
        failed = metrics.requests.labels("unknown", "transcribe", "internal_error")._value.get()
        assert failed == 2
        # Digital silence of 0.1 s: the fault double is called because this
        # scheduler has no VAD in front of it; it failed both times.
        assert engine.calls == 2

    asyncio.run(scenario())


WORKER_KILLER = """
import sys
from asr_server import __main__ as entry
from asr_server import app

class WorkerKillingEngine:
    '''Fault double: a fatal error escapes every request handler and ends the worker thread.'''
    def serve(self, source, capacity, observe_pass):
        source.next(block=True)
        raise SystemExit("injected fault: the inference worker thread dies")

app.load_engine = lambda settings: WorkerKillingEngine()
sys.exit(entry.main())
"""


def test_a_dead_worker_answers_internal_error_turns_health_503_and_exits_non_zero() -> None:
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "ASR_VAD": "0", "SHUTDOWN_GRACE_S": "5"}
    server = ServerProcess(env=env, command=[sys.executable, "-c", WORKER_KILLER])
    with server, connect(server.url):  # an idle client keeps the process draining for a moment
        assert server.health(server.metrics_port)[0] == 200
        reply = exchange(server.url, {"type": "transcribe", "language": "en"},
                         wav_bytes(np.zeros(16_000, dtype=np.float32), 16_000))
        assert reply.reply["error"] == "internal_error" and reply.close_code == 1011
        dead = (503, {"status": "error", "detail": "the inference worker is not running"})
        deadline = time.monotonic() + 5  # the thread ends just after it answers
        while (health := server.health(server.metrics_port)) != dead and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health == dead
        assert server.proc is not None
        assert server.proc.wait(30) == 70  # no signal sent: it leaves by itself, for systemd to restart
        server.wait_for_line("inference worker thread died")
