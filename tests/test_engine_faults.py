"""The static cache and the decoding loop's faults, in-process, with the real model on real speech.

Out of memory is a fault no CPU can be made to produce on demand, and a device fault (a CUDA error,
a device-side assert) cannot happen without a GPU: each is injected by a named fault double that
raises where the real part would, on the n-th call, the rest of the loop and the model real.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from asr_server.contract.domain import TranscribeOptions
from asr_server.engine import decoding_loop, forward, kv_cache
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.faults import DeviceFailed, is_device_fault, is_out_of_memory
from asr_server.engine.transcriber import Engine
from tests.harness import ServerProcess, load_manifest

from .conftest import Engines, exchange

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)"
DEVICE_ASSERT = "CUDA error: device-side assert triggered (injected fault)"


class FailsOnCall:
    """Fault double: the ``nth`` call of ``real`` raises ``error`` instead of running; others run."""

    def __init__(self, real: Callable[..., Any], nth: int, error: BaseException) -> None:
        self.real, self.nth, self.error, self.calls = real, nth, error, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            raise self.error
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def engine(engines: Engines) -> Engine:
    return engines.get()  # float32, greedy, no VAD


@pytest.fixture(scope="module")
def three() -> list[tuple[np.ndarray, TranscribeOptions]]:
    clips = [c for c in load_manifest() if c.kind == "short" and c.lang == "en" and c.duration < 12][:3]
    english = TranscribeOptions("en", "transcribe")
    return [(decode_wav(c.path.read_bytes(), 60).samples, english) for c in clips]


def test_the_cache_is_reserved_once_for_every_slot(engine: Engine) -> None:
    caches, dims = engine.loop.caches, engine.model.dims
    assert caches.slots == 8 and caches.capacity == dims.n_text_ctx
    assert caches.self_k[0].shape == (8, caches.rows, dims.n_text_head, dims.n_text_ctx,
                                      dims.n_text_state // dims.n_text_head)
    held = sum(t.numel() * t.element_size() for t in (*caches.self_k, *caches.self_v,
                                                         *caches.cross_k, *caches.cross_v))
    assert held == caches.reserved_bytes == engine.cache_bytes


def test_a_slot_whose_opening_runs_out_of_memory_is_free_again(engine: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    caches = engine.loop.caches
    features = torch.zeros(1, engine.model.dims.n_audio_ctx, engine.model.dims.n_audio_state)
    key = engine.model.decoder.blocks[-1].cross_attn.key
    monkeypatch.setattr(key, "forward", FailsOnCall(key.forward, 1, torch.OutOfMemoryError(OOM)))
    free_before = sorted(caches.free)
    with torch.inference_mode():  # as the loop runs (its cache may be inference tensors by now)
        with pytest.raises(torch.OutOfMemoryError):
            caches.open(features)  # the last layer fails, after the others were written
        assert sorted(caches.free) == free_before
        monkeypatch.undo()
        slots = [caches.open(features) for _ in range(caches.slots)]
        assert sorted(slots) == list(range(caches.slots))  # every slot, none lost
        with pytest.raises(RuntimeError, match="all 8 cache slots are taken"):
            caches.open(features)
        for slot in slots:
            caches.close(slot)


@pytest.mark.parametrize("step", ["encode", "prefill", "open"])
def test_out_of_memory_in_a_step_fails_only_its_request(engine: Engine, three: Any, step: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second call of the step belongs to the second request (each clip is one window, taken in
    order): it alone fails, the others are what they are alone, and the loop goes on serving."""
    alone = [engine.transcribe(*item) for item in three]
    if step == "open":
        real = kv_cache.Caches.open
        double = FailsOnCall(lambda *a: real(engine.loop.caches, *a), 2, torch.OutOfMemoryError(OOM))
        monkeypatch.setattr(engine.loop.caches, "open", double)
    else:
        double = FailsOnCall(getattr(forward, step), 2, torch.OutOfMemoryError(OOM))
        monkeypatch.setattr(forward, step, double)
    results = engine.transcribe_batch(three)
    assert double.calls >= 3
    assert [results[0], results[2]] == [alone[0], alone[2]]
    assert isinstance(results[1], torch.OutOfMemoryError)
    assert len(engine.loop.caches.free) == engine.loop.caches.slots  # every slot back
    monkeypatch.undo()
    assert engine.transcribe(*three[1]) == alone[1]


def test_out_of_memory_in_the_advance_after_a_pass_fails_that_pass_and_the_loop_goes_on(
        engine: Engine, three: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = [engine.transcribe(*item) for item in three]
    # Calls 1-3 are each request's first token (after its prompt); call 4 is the first shared pass.
    double = FailsOnCall(decoding_loop.advance, 4, torch.OutOfMemoryError(OOM))
    monkeypatch.setattr(decoding_loop, "advance", double)
    results = engine.transcribe_batch(three)
    assert all(isinstance(r, torch.OutOfMemoryError) for r in results), results
    assert len(engine.loop.caches.free) == engine.loop.caches.slots
    monkeypatch.undo()
    assert engine.transcribe_batch(three) == alone


@pytest.mark.parametrize("where", ["step", "encode", "prefill"])
def test_a_device_fault_ends_the_loop(engine: Engine, three: Any, where: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A device-side assert is nobody's request: the loop stops (the scheduler answers everyone)."""
    monkeypatch.setattr(forward, where, FailsOnCall(getattr(forward, where), 1, RuntimeError(DEVICE_ASSERT)))
    with pytest.raises(DeviceFailed):
        engine.transcribe_batch(three)
    monkeypatch.undo()
    engine.loop.caches.free = list(range(engine.loop.caches.slots))  # a new process would start anew


def test_faults_are_told_apart() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError(OOM)) and not is_device_fault(torch.OutOfMemoryError(OOM))
    assert is_device_fault(RuntimeError(DEVICE_ASSERT))
    assert is_device_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_fault(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"))
    assert not is_device_fault(ValueError("the audio is empty"))
    assert not is_device_fault(IndexError("index 448 is out of bounds"))


DEVICE_FAULT_SERVER = """
import sys
from asr_server import __main__ as entry
from asr_server.engine import forward
from asr_server.engine.transcriber import Engine

class DeviceAssertInTheSecondPass:
    '''Fault double: the second decoder pass after the warm-up fails as CUDA does after a device-side
    assert.'''
    def __init__(self):
        self.real, self.calls, self.armed = forward.step, 0, False
    def __call__(self, caches, plan):
        self.calls += self.armed
        if self.calls == 2:
            raise RuntimeError("CUDA error: device-side assert triggered (injected fault)")
        return self.real(caches, plan)

forward.step = double = DeviceAssertInTheSecondPass()
warm_up = Engine.warm_up
def warm_up_then_arm(engine):
    warm_up(engine)
    double.armed = True
Engine.warm_up = warm_up_then_arm
sys.exit(entry.main())
"""


def test_a_device_fault_in_the_server_is_internal_error_503_and_exit_70() -> None:
    """Another client stays connected, idle: the drain waits for it (up to the grace), and /health
    says 503 meanwhile, before the process exits 70."""
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "ASR_VAD": "0", "SHUTDOWN_GRACE_S": "5",
           "METADATA_TIMEOUT_S": "60"}
    clip = next(c for c in load_manifest() if "jfk" in c.path.name)
    server = ServerProcess(env=env, command=[sys.executable, "-c", DEVICE_FAULT_SERVER])
    with server, connect(server.url, open_timeout=30):
        assert server.health(server.metrics_port)[0] == 200
        reply = exchange(server.url, {"type": "transcribe", "language": "en"}, clip.path.read_bytes())
        assert reply.reply["error"] == "internal_error" and reply.close_code == 1011
        assert "CUDA" not in reply.reply["detail"]  # internals stay in the log
        dead = (503, {"status": "error", "detail": "the inference worker is not running"})
        deadline = time.monotonic() + 10
        while (health := server.health(server.metrics_port)) != dead and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health == dead
        assert server.proc is not None
        assert server.proc.wait(30) == 70
        server.wait_for_line("DeviceFailed")


