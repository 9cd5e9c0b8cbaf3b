"""Shared fixtures: the real server as a subprocess on 127.0.0.1, started once per configuration.

Also the one hook: a failed test that drove a browser (``chromium`` fixture)
leaves its screenshot, DOM and console log under ``test-artifacts/``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness import ServerProcess

if TYPE_CHECKING:
    from whisper.model import Whisper

    from asr_server.engine.transcriber import Engine

KEYS = ("test-key-old-7f3a", "test-key-new-91c2")
KEY = KEYS[1]
# The strict server's limits, small so each error is cheap to reach.
STRICT_MAX_SECONDS = 20
STRICT_MAX_BYTES = 2_000_000
STRICT_TIMEOUT_S = 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                               ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    driver = getattr(item, "funcargs", {}).get("chromium")
    if report.failed and driver is not None and call.when == "call":
        from tests.browser import save_artifacts  # selenium only where a browser ran

        folder = save_artifacts(driver, item.nodeid)
        report.sections.append(("browser artifacts", f"screenshot, DOM and console log in {folder}"))
    return report


class Engines:
    """In-process engines on the CPU, each kind built once, over one load of the checkpoint per dtype."""

    def __init__(self) -> None:
        self._models: dict[str, Whisper] = {}
        self._engines: dict[tuple[object, ...], Engine] = {}

    def model(self, precision: str = "exact") -> Whisper:
        """The checkpoint held in ``precision``'s dtype (int8's layers are swapped by its engine)."""
        from asr_server.engine.model_loading import DTYPES

        dtype = str(DTYPES[precision])
        if dtype not in self._models:
            import torch

            from asr_server.config import Config
            from asr_server.engine.model_loading import load_model

            self._models[dtype] = load_model(Config().model_path, torch.device("cpu"), DTYPES[precision])
        return self._models[dtype]

    def get(self, beam_size: int = 1, vad: bool = False, batched_attention: bool | None = None,
            precision: str = "exact") -> Engine:
        """exact by default: whisper's own output is the oracle, in float32."""
        key = (beam_size, vad, batched_attention, precision)
        if key not in self._engines:
            import torch

            from asr_server.config import Config
            from asr_server.engine.transcriber import Engine, EngineSettings

            settings = EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(),
                                      beam_size=beam_size, vad=vad, precision=precision,
                                      batched_attention=batched_attention)
            # int8 and bf16 swap the model's Linear layers in place (cpu_linear.py): on a copy, so the
            # shared model stays as loaded.
            model = self.model(precision)
            if precision in ("int8", "bfloat16"):
                model = copy.deepcopy(model)
            self._engines[key] = Engine(settings, model)
        return self._engines[key]


@pytest.fixture(scope="session")
def engines() -> Engines:
    """Every in-process engine test's engines: the checkpoint is loaded once per dtype, per session."""
    return Engines()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """Greedy decoding (fast), two keys, DEBUG logging so the privacy test sees everything."""
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": ",".join(KEYS), "LOG_LEVEL": "DEBUG",
           # Room for test_preauth's 200 silent connections on any host.
           "MAX_PENDING_CONNECTIONS": "256"}
    with ServerProcess(env=env) as process:
        yield process


@pytest.fixture(scope="session")
def strict_server() -> Iterator[ServerProcess]:
    """Tight limits, one request at a time and a queue of one, to reach every limit and overload."""
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY, "MAX_AUDIO_SECONDS": str(STRICT_MAX_SECONDS),
           "MAX_AUDIO_BYTES": str(STRICT_MAX_BYTES), "METADATA_TIMEOUT_S": str(STRICT_TIMEOUT_S),
           "AUDIO_TIMEOUT_S": str(STRICT_TIMEOUT_S), "ASR_MAX_QUEUE": "1",
           # One place in the engine: a second request waits in the queue instead of joining
           # the first one's decode (continuous batching), so a third finds the queue full.
           "ASR_MAX_BATCH": "1",
           # Above the 500 idle connections of the bad-input corpus (test_preauth tests the cap).
           "MAX_PENDING_CONNECTIONS": "1000",
           "MAX_LIVE_SESSIONS": "1"}
    with ServerProcess(env=env) as process:
        yield process


@dataclass
class Exchange:
    """Every frame the server sent, and how it closed."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def reply(self) -> dict[str, Any]:
        assert len(self.replies) == 1, self.replies
        return self.replies[0]


def exchange(url: str, *frames: str | bytes | dict[str, Any], timeout_s: float = 300) -> Exchange:
    """Send the frames back to back, then read until the server closes."""
    result = Exchange()
    with connect(url, open_timeout=30, max_size=None) as ws:
        try:
            for frame in frames:
                ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)
        except ConnectionClosed:
            pass
        try:
            while True:
                result.replies.append(json.loads(ws.recv(timeout=timeout_s)))
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                result.close_code, result.close_reason = closed.rcvd.code, closed.rcvd.reason
    return result


def request(language: str | None = "en", **fields: Any) -> dict[str, Any]:
    return {"type": "transcribe", "language": language, "api_key": KEY, "machine_id": "ab12cd", **fields}
