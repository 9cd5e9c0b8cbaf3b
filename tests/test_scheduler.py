"""The scheduler's own unit tests: queue bounds, order, cancellation, failures.

The engine here is a stand-in (``GatedStandInEngine``), which design.md allows
for the scheduler's unit tests only: it records calls and blocks on a gate
so queue states can be set up exactly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from asr_server.contract.domain import TranscribeOptions, Transcription
from asr_server.contract.errors import InternalError, Overloaded
from asr_server.engine.job import Speech
from asr_server.engine.scheduler import Scheduler
from asr_server.engine.vad import GateCancelled, SpeechRegion
from tests.harness import wait_until_async

OPTIONS = TranscribeOptions("en", "transcribe")


class GatedStandInEngine:
    """Stand-in engine: takes one request at a time and answers its first sample as text once the
    gate opens; a negative sample fails that request alone."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[float] = []

    def serve(self, source: Any, capacity: int, observe_pass: Callable[[int], None]) -> None:
        while (job := source.next(block=True)) is not None:
            self.started.set()
            self.calls.append(float(job.samples[0]))
            self.gate.wait(10)
            observe_pass(1)
            if job.samples[0] < 0:
                job.settle(None, RuntimeError("injected engine fault"))
            else:
                job.settle(Transcription(text=str(job.samples[0]), segments=(),
                                         language=job.options.language or ""), None)


def audio(marker: float) -> np.ndarray:
    return np.full(4, marker, dtype=np.float32)


async def started(engine: GatedStandInEngine) -> None:
    assert await asyncio.to_thread(engine.started.wait, 10), "the worker never called the engine"


async def queued(scheduler: Scheduler, depth: int) -> None:
    """Until ``depth`` requests wait in the queue: the tasks just created have reached ``submit``."""
    await wait_until_async(lambda: scheduler.depth == depth, 10, f"{depth} requests in the queue")


# The deadline tests' queue deadline; they keep a request waiting twice as long.
DEADLINE_S = 0.2


def make(max_queue: int, max_batch: int = 1, batches: list[int] | None = None,
         deadline_s: float = 60.0) -> tuple[Scheduler, GatedStandInEngine]:
    engine = GatedStandInEngine()
    scheduler = Scheduler(lambda: engine, max_queue, max_batch, deadline_s,
                          (batches if batches is not None else []).append)
    scheduler.start()
    return scheduler, engine


async def busy(max_queue: int) -> tuple[Scheduler, GatedStandInEngine, asyncio.Task[Transcription]]:
    """A ready scheduler whose worker holds job 1 (blocked on the gate), its queue empty again."""
    scheduler, engine = make(max_queue=max_queue)
    await scheduler.wait_ready()
    running = asyncio.create_task(scheduler.submit(audio(1), OPTIONS))
    await started(engine)
    return scheduler, engine, running


def test_runs_one_at_a_time_in_order() -> None:
    batches: list[int] = []

    async def scenario() -> None:
        scheduler, engine = make(max_queue=8, batches=batches)
        await scheduler.wait_ready()
        tasks = [asyncio.create_task(scheduler.submit(audio(i), OPTIONS)) for i in range(5)]
        await started(engine)
        engine.gate.set()
        results = await asyncio.gather(*tasks)
        assert [r.text for r in results] == [str(float(i)) for i in range(5)]
        assert engine.calls == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert batches == [1, 1, 1, 1, 1]  # each pass is counted with its size
        await scheduler.stop()
        assert not scheduler.alive

    asyncio.run(scenario())


def test_full_queue_answers_overloaded_at_once() -> None:
    async def scenario() -> None:
        scheduler, engine, running = await busy(max_queue=2)
        waiting = [asyncio.create_task(scheduler.submit(audio(i), OPTIONS)) for i in (2, 3)]
        await queued(scheduler, 2)
        with pytest.raises(Overloaded, match="2 requests"):
            await scheduler.submit(audio(4), OPTIONS)
        assert scheduler.depth == 2
        engine.gate.set()
        await asyncio.gather(running, *waiting)
        assert engine.calls == [1.0, 2.0, 3.0]
        await scheduler.stop()

    asyncio.run(scenario())


def test_a_cancelled_request_never_reaches_the_model() -> None:
    async def scenario() -> None:
        scheduler, engine, running = await busy(max_queue=4)
        gone = asyncio.create_task(scheduler.submit(audio(2), OPTIONS))
        kept = asyncio.create_task(scheduler.submit(audio(3), OPTIONS))
        await queued(scheduler, 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone  # the cancellation has reached the scheduler before the worker moves on
        engine.gate.set()
        await asyncio.gather(running, kept)
        assert engine.calls == [1.0, 3.0]
        await scheduler.stop()

    asyncio.run(scenario())


def test_a_cancelled_request_frees_its_place_at_once() -> None:
    async def scenario() -> None:
        scheduler, engine, running = await busy(max_queue=1)
        gone = asyncio.create_task(scheduler.submit(audio(2), OPTIONS))
        await queued(scheduler, 1)
        with pytest.raises(Overloaded):
            await scheduler.submit(audio(3), OPTIONS)  # the one place is taken
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert scheduler.depth == 0  # left the queue while the worker is still busy
        kept = asyncio.create_task(scheduler.submit(audio(4), OPTIONS))
        await queued(scheduler, 1)  # the freed place is taken again
        engine.gate.set()
        assert (await kept).text == "4.0"
        await running
        assert engine.calls == [1.0, 4.0]
        await scheduler.stop()

    asyncio.run(scenario())


def test_an_engine_failure_reaches_only_its_caller() -> None:
    async def scenario() -> None:
        scheduler, engine = make(max_queue=4)
        engine.gate.set()
        await scheduler.wait_ready()
        with pytest.raises(RuntimeError, match="injected"):
            await scheduler.submit(audio(-1), OPTIONS)
        assert (await scheduler.submit(audio(5), OPTIONS)).text == "5.0"
        assert scheduler.alive
        await scheduler.stop()

    asyncio.run(scenario())


def test_before_the_model_loads_requests_are_overloaded() -> None:
    async def scenario() -> None:
        loaded = threading.Event()

        def slow_load() -> GatedStandInEngine:
            loaded.wait(10)
            return GatedStandInEngine()

        scheduler = Scheduler(slow_load, 4)
        scheduler.start()
        with pytest.raises(Overloaded, match="loading"):
            await scheduler.submit(audio(1), OPTIONS)
        loaded.set()
        await scheduler.wait_ready()
        assert scheduler.ready
        await scheduler.stop()

    asyncio.run(scenario())


def test_a_failed_load_is_reported() -> None:
    async def scenario() -> None:
        def broken_load() -> GatedStandInEngine:
            raise FileNotFoundError("no checkpoint")

        scheduler = Scheduler(broken_load, 4)
        scheduler.start()
        with pytest.raises(FileNotFoundError):
            await scheduler.wait_ready()
        assert not scheduler.ready
        with pytest.raises(Overloaded):
            await scheduler.submit(audio(1), OPTIONS)

    asyncio.run(scenario())


def test_after_stop_requests_are_refused() -> None:
    async def scenario() -> None:
        scheduler, engine = make(max_queue=4)
        engine.gate.set()
        await scheduler.wait_ready()
        await scheduler.stop()
        with pytest.raises(InternalError):
            await scheduler.submit(audio(1), OPTIONS)

    asyncio.run(scenario())


def test_a_request_that_waited_past_the_deadline_is_overloaded() -> None:
    async def scenario() -> None:
        scheduler, engine = make(max_queue=4, deadline_s=DEADLINE_S)
        await scheduler.wait_ready()
        running = asyncio.create_task(scheduler.submit(audio(1), OPTIONS))
        await started(engine)
        late = asyncio.create_task(scheduler.submit(audio(2), OPTIONS))
        await queued(scheduler, 1)
        # Time in the queue is what is under test, and only the clock measures it: a fixed wait,
        # past the deadline, while the gate holds the worker busy.
        await asyncio.sleep(2 * DEADLINE_S)
        engine.gate.set()
        assert (await running).text == "1.0"
        with pytest.raises(Overloaded, match="waited"):
            await late
        assert engine.calls == [1.0]
        await scheduler.stop()

    asyncio.run(scenario())


class DyingStandInEngine(GatedStandInEngine):
    """Fault double: the worker thread dies (a fatal error outside any request) while it holds one."""

    def serve(self, source: Any, capacity: int, observe_pass: Callable[[int], None]) -> None:
        source.next(block=True)
        self.started.set()
        self.gate.wait(10)
        raise SystemExit("injected fault: the worker dies")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_dying_worker_answers_the_request_it_held_and_those_waiting() -> None:
    async def scenario() -> None:
        engine = DyingStandInEngine()
        scheduler = Scheduler(lambda: engine, max_queue=4)
        scheduler.start()
        await scheduler.wait_ready()
        held = asyncio.create_task(scheduler.submit(audio(1), OPTIONS))
        await started(engine)
        waiting = asyncio.create_task(scheduler.submit(audio(2), OPTIONS))
        await queued(scheduler, 1)
        engine.gate.set()
        for task in (held, waiting):
            with pytest.raises(InternalError, match="stopped"):
                await task
        await wait_until_async(lambda: not scheduler.alive, 10, "the worker thread to end")

    asyncio.run(scenario())


class SpeechGatedStandInEngine(GatedStandInEngine):
    """Stand-in with a speech gate: records the thread it runs on and what the worker is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_threads: list[str] = []
        self.handed: list[Any] = []
        self.gate.set()

    def speech(self, samples: np.ndarray, cancelled: threading.Event | None = None) -> Speech:
        self.gate_threads.append(threading.current_thread().name)
        return Speech(checked=True, regions=[SpeechRegion(0.0, float(samples[0]))])

    def serve(self, source: Any, capacity: int, observe_pass: Callable[[int], None]) -> None:
        while (job := source.next(block=True)) is not None:
            self.handed.append(job.speech.regions[0].end)
            job.settle(Transcription(text="", segments=(), language="en"), None)


def test_the_speech_gate_runs_off_the_worker_before_the_queue() -> None:
    async def scenario() -> None:
        engine = SpeechGatedStandInEngine()
        scheduler = Scheduler(lambda: engine, max_queue=4)
        scheduler.start()
        await scheduler.wait_ready()
        await asyncio.gather(*(scheduler.submit(audio(m), OPTIONS) for m in (1, 2)))
        assert sorted(engine.handed) == [1.0, 2.0]
        assert set(engine.gate_threads) == {"asr-vad_0"}  # its own thread: not the worker, not the loop
        await scheduler.stop()

    asyncio.run(scenario())


class ContinuousStandInEngine(GatedStandInEngine):
    """Stand-in for an engine that batches continuously: it holds each request it takes until
    the test releases that request's marker, and takes another whenever one of its places is free."""

    def __init__(self) -> None:
        super().__init__()
        self.release: dict[float, threading.Event] = {}
        self.taken = threading.Condition()

    def serve(self, source: Any, capacity: int, observe_pass: Callable[[int], None]) -> None:
        places = threading.Semaphore(capacity)
        holders = []

        def hold(job: Any) -> None:
            marker = float(job.samples[0])
            with self.taken:
                gate = self.release.setdefault(marker, threading.Event())
            gate.wait(10)
            places.release()
            job.settle(Transcription(text=str(marker), segments=(), language="en"), None)

        while places.acquire() and (job := source.next(block=True)) is not None:
            with self.taken:
                self.calls.append(float(job.samples[0]))
                self.taken.notify_all()
            holders.append(threading.Thread(target=hold, args=(job,)))
            holders[-1].start()
        for holder in holders:
            holder.join()

    def let_go(self, marker: float) -> None:
        with self.taken:
            self.release.setdefault(marker, threading.Event()).set()

    async def took(self, count: int) -> list[float]:
        def wait() -> list[float]:
            with self.taken:
                assert self.taken.wait_for(lambda: len(self.calls) >= count, 10), (
                    f"the engine took {self.calls}, not {count} requests")
                return list(self.calls)
        return await asyncio.to_thread(wait)


async def continuous(deadline_s: float) -> tuple[Scheduler, ContinuousStandInEngine]:
    """A ready scheduler with two places in a continuous stand-in engine."""
    engine = ContinuousStandInEngine()
    scheduler = Scheduler(lambda: engine, max_queue=8, max_batch=2, deadline_s=deadline_s)
    scheduler.start()
    await scheduler.wait_ready()
    return scheduler, engine


def test_a_continuous_engine_takes_each_request_as_soon_as_a_place_is_free() -> None:
    async def scenario() -> None:
        scheduler, engine = await continuous(deadline_s=60.0)
        tasks = [asyncio.create_task(scheduler.submit(audio(m), OPTIONS)) for m in (1, 2, 3, 4)]
        assert await engine.took(2) == [1.0, 2.0]
        await queued(scheduler, 2)
        assert engine.calls == [1.0, 2.0]  # both places are taken: 3 and 4 wait
        engine.let_go(2)  # the second ends first: its place goes to the next in line, not later
        assert (await tasks[1]).text == "2.0"
        assert await engine.took(3) == [1.0, 2.0, 3.0] and scheduler.depth == 1
        for marker in (1, 3, 4):
            engine.let_go(marker)
        assert [(await t).text for t in tasks] == ["1.0", "2.0", "3.0", "4.0"]
        await scheduler.stop()
        assert not scheduler.alive

    asyncio.run(scenario())


def test_a_continuous_engine_gets_no_request_that_waited_past_the_deadline() -> None:
    async def scenario() -> None:
        scheduler, engine = await continuous(deadline_s=DEADLINE_S)
        held = [asyncio.create_task(scheduler.submit(audio(m), OPTIONS)) for m in (1, 2)]
        await engine.took(2)
        late = asyncio.create_task(scheduler.submit(audio(3), OPTIONS))
        await queued(scheduler, 1)
        # As above: only the clock shows time in the queue; both places are held meanwhile.
        await asyncio.sleep(2 * DEADLINE_S)
        engine.let_go(1)
        with pytest.raises(Overloaded, match="waited"):
            await late
        fresh = asyncio.create_task(scheduler.submit(audio(4), OPTIONS))
        engine.let_go(2)
        engine.let_go(4)
        assert [(await t).text for t in (*held, fresh)] == ["1.0", "2.0", "4.0"]
        assert engine.calls == [1.0, 2.0, 4.0]
        await scheduler.stop()

    asyncio.run(scenario())


class SlowGateStandInEngine(SpeechGatedStandInEngine):
    """Stand-in whose speech gate holds every request until ``gate_open`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_open = threading.Event()

    def speech(self, samples: np.ndarray, cancelled: threading.Event | None = None) -> Speech:
        self.gate_open.wait(10)
        return super().speech(samples, cancelled)


def test_requests_at_the_speech_gate_count_toward_the_queue() -> None:
    """Two requests held at a slow gate (one in its thread, one waiting for it) fill a queue of two."""
    async def scenario() -> None:
        engine = SlowGateStandInEngine()
        scheduler = Scheduler(lambda: engine, max_queue=2)
        scheduler.start()
        await scheduler.wait_ready()
        held = [asyncio.create_task(scheduler.submit(audio(m), OPTIONS)) for m in (1, 2)]
        await queued(scheduler, 2)
        with pytest.raises(Overloaded, match="2 requests"):
            await scheduler.submit(audio(3), OPTIONS)
        engine.gate_open.set()
        await asyncio.gather(*held)
        assert scheduler.depth == 0 and sorted(engine.handed) == [1.0, 2.0]
        await scheduler.stop()

    asyncio.run(scenario())


class BlockwiseGateStandInEngine(SpeechGatedStandInEngine):
    """Stand-in whose speech gate works in blocks, as silero's does, and stops once cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.in_gate = threading.Event()
        self.blocks_run = 0
        self.cancel_seen = threading.Event()

    def speech(self, samples: np.ndarray, cancelled: threading.Event | None = None) -> Speech:
        assert cancelled is not None
        self.in_gate.set()
        for _ in range(1000):  # a long recording's blocks
            if cancelled.wait(0.01):
                self.cancel_seen.set()
                raise GateCancelled("cancelled")
            self.blocks_run += 1
        return super().speech(samples, cancelled)


def test_a_cancelled_request_stops_its_speech_gate_and_frees_it() -> None:
    """A caller that leaves while its gate runs stops the gate at its next block: the next request's
    gate then runs at once, not after the first one's whole recording."""
    async def scenario() -> None:
        engine = BlockwiseGateStandInEngine()
        scheduler = Scheduler(lambda: engine, max_queue=4)
        scheduler.start()
        await scheduler.wait_ready()
        leaving = asyncio.create_task(scheduler.submit(audio(1), OPTIONS))
        assert await asyncio.to_thread(engine.in_gate.wait, 10)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await asyncio.to_thread(engine.cancel_seen.wait, 10)
        assert engine.blocks_run < 1000
        assert scheduler.depth == 0
        engine.in_gate.clear()
        engine.blocks_run = 0
        # The next request's gate is not held behind the first one's remaining blocks.
        next_one = asyncio.create_task(scheduler.submit(audio(2), OPTIONS))
        await asyncio.wait_for(next_one, 30)
        assert engine.handed == [2.0] and engine.blocks_run == 1000
        await scheduler.stop()

    asyncio.run(scenario())


def test_stop_leaves_the_event_loop_serving() -> None:
    """``stop`` waits for the worker off the event loop: other tasks run while it joins."""
    async def scenario() -> None:
        scheduler, engine = make(max_queue=4)
        await scheduler.wait_ready()
        running = asyncio.create_task(scheduler.submit(audio(1), OPTIONS))
        await started(engine)
        stopping = asyncio.create_task(scheduler.stop(timeout_s=10))
        ticks = 0
        while not stopping.done() and ticks < 5:
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5 and not stopping.done()  # the loop ran while the worker was still held
        engine.gate.set()
        await stopping
        assert (await running).text == "1.0" and not scheduler.alive

    asyncio.run(scenario())

