"""DecoderSteps' own unit tests: who waits for whom, where the work runs, how failures spread.

No model here: ``run_steps`` is a stand-in decoder pass that gives each
decode call its tokens plus one and records how many calls each pass carried.
The one fault double, ``OutOfMemoryFaultSteps``, raises the way a GPU out of
memory does, which no real part here can be made to do on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import torch

from asr_server.batching import DecoderSteps


class StandInDecoderPass:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, states: Sequence[Any], tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.sizes.append(len(states))
        return [t + 1 for t in tokens]


class OutOfMemoryFaultSteps(StandInDecoderPass):
    """Fault double: a pass of more than two decode calls, or any pass with the one marked
    "huge", runs out of device memory as CUDA does."""

    def __call__(self, states: Sequence[Any], tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(states) > 2 or "huge" in states:
            self.sizes.append(-len(states))
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (injected fault)")
        return super().__call__(states, tokens)


def decoding(steps: DecoderSteps, name: str, count: int, begun: Callable[[], object] = lambda: None,
             before: Callable[[int], None] = lambda i: None) -> Callable[[], list[int]]:
    """A participant's work: one decode call of ``count`` steps, as SteppedInference makes them."""
    def work() -> list[int]:
        steps.begin_decoding()
        begun()
        token = torch.zeros(1, 1, dtype=torch.long)
        seen = []
        try:
            for i in range(count):
                before(i)
                token = steps.step(name, token)
                seen.append(int(token))
        finally:
            steps.end_decoding()
        return seen
    return work


def run_all(steps: DecoderSteps, works: list[Callable[[], Any]], run_steps: StandInDecoderPass,
            pool: ThreadPoolExecutor) -> list[Future[Any]]:
    """Each work as a participant; serve on this thread until the last one ends."""
    futures = []
    for work in works:
        steps.join()
        futures.append(pool.submit(steps.run, work))
    steps.close()
    steps.serve(run_steps)
    return futures


def test_a_step_waits_for_every_decode_in_progress() -> None:
    steps, run_steps = DecoderSteps(), StandInDecoderPass()
    begun = threading.Barrier(3)
    with ThreadPoolExecutor(3) as pool:
        works = [decoding(steps, n, count, lambda: begun.wait(5))
                 for n, count in (("a", 2), ("b", 4), ("c", 6))]
        futures = run_all(steps, works, run_steps, pool)
        assert [f.result(5) for f in futures] == [[1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]
    assert run_steps.sizes == [3, 3, 2, 2, 1, 1]


def test_a_decode_that_starts_later_joins_the_next_step() -> None:
    steps, run_steps = DecoderSteps(), StandInDecoderPass()
    two_done, late_begun = threading.Event(), threading.Event()

    def first_lets_the_late_one_begin(i: int) -> None:
        if i == 2:
            two_done.set()
            assert late_begun.wait(5)

    late = decoding(steps, "late", 2, begun=late_begun.set)
    with ThreadPoolExecutor(2) as pool:
        futures = run_all(steps, [decoding(steps, "first", 6, before=first_lets_the_late_one_begin),
                                  lambda: two_done.wait(5) and late()], run_steps, pool)
        assert [f.result(5) for f in futures] == [[1, 2, 3, 4, 5, 6], [1, 2]]
    assert run_steps.sizes == [1, 1, 2, 2, 1, 1]


def test_calls_run_on_the_serving_thread_one_at_a_time() -> None:
    steps, run_steps = DecoderSteps(), StandInDecoderPass()
    with ThreadPoolExecutor(4) as pool:
        futures = run_all(steps, [lambda: steps.call(lambda: threading.current_thread().name)] * 4,
                          run_steps, pool)
        assert {f.result(5) for f in futures} == {threading.current_thread().name}
    assert run_steps.sizes == []


def test_a_failing_step_is_retried_in_halves_and_fails_only_the_decode_too_big() -> None:
    steps, run_steps = DecoderSteps(), OutOfMemoryFaultSteps()
    begun = threading.Barrier(4)
    names = ["a", "b", "huge", "d"]
    with ThreadPoolExecutor(4) as pool:
        works = [decoding(steps, n, 2, lambda: begun.wait(5)) for n in names]
        futures = run_all(steps, works, run_steps, pool)
        for name, future in zip(names, futures, strict=True):
            if name == "huge":
                with pytest.raises(RuntimeError, match="out of memory"):
                    future.result(5)
            else:
                assert future.result(5) == [1, 2]
    # 4 failed; of its halves, the one without "huge" ran, the other failed, then ran in
    # halves of one, where "huge" failed alone.
    assert run_steps.sizes[0] == -4 and sorted(run_steps.sizes[1:5]) == [-2, -1, 1, 2]


def test_serve_returns_once_closed_and_the_last_participant_has_ended() -> None:
    steps, run_steps = DecoderSteps(), StandInDecoderPass()
    release = threading.Event()
    steps.join()
    served = threading.Thread(target=steps.serve, args=(run_steps,))
    served.start()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(steps.run, lambda: release.wait(5))
        steps.close()
        served.join(0.2)
        assert served.is_alive()  # a participant is still running
        release.set()
        assert future.result(5)
    served.join(5)
    assert not served.is_alive()


def test_a_dying_worker_fails_every_participant_instead_of_leaving_it_waiting() -> None:
    steps = DecoderSteps()

    def dying(states: Sequence[Any], tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        raise SystemExit("injected fault: the worker thread dies")

    begun = threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        futures = []
        for name in ("a", "b"):
            steps.join()
            futures.append(pool.submit(steps.run, decoding(steps, name, 3, lambda: begun.wait(5))))
        steps.close()
        with pytest.raises(SystemExit):
            steps.serve(dying)
        for future in futures:
            with pytest.raises(RuntimeError, match="the inference worker stopped"):
                future.result(5)
    with pytest.raises(RuntimeError, match="the inference worker stopped"):
        steps.call(lambda: None)  # and whoever comes later does not wait either
