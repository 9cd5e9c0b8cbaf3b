"""The single inference worker and the bounded queue in front of it.

One thread owns the engine (it loads the model and runs every transcription),
so torch never runs on the event loop. ``submit`` is the only way in: a full
queue answers ``overloaded`` at once instead of letting latency grow without
bound. An engine that batches continuously (``ContinuousTranscriber``, the
real one) is handed each request as soon as one of its ``max_batch`` places
is free, and settles each the moment it is done; any other takes up to
``max_batch`` waiting requests at a time as one batch. A request whose caller
has gone (its awaiting task cancelled) leaves the queue at once, freeing its
place and its audio, and never reaches the model; one that waited past
``deadline_s`` is answered ``overloaded`` rather than run late.
A batch that runs out of device memory is split in halves and retried, down
to single requests: only a request too big to run alone fails, and only it
(a continuous engine does the same with each decoder pass, batching.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from asr_server.errors import InternalError, Overloaded
from asr_server.protocol import TranscribeOptions, Transcription


class Transcriber(Protocol):
    def transcribe_batch(
        self, items: list[tuple[np.ndarray, TranscribeOptions]]
    ) -> list[Transcription | Exception]: ...


@runtime_checkable
class ContinuousTranscriber(Transcriber, Protocol):
    """An engine that takes requests while others run (the real one, when ``continuous``)."""

    @property
    def continuous(self) -> bool: ...

    def transcribe_continuously(self, take: Callable[[], _Job | None], capacity: int,
                                observe_step: Callable[[int], None]) -> None: ...


@dataclass(eq=False)
class _Job:
    samples: np.ndarray
    options: TranscribeOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Transcription]
    enqueued: float = field(default_factory=time.monotonic)

    def settle(self, result: Transcription | None, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(future: asyncio.Future[Transcription], result: Transcription | None,
            error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def is_out_of_memory(error: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or the RuntimeError older torch and the CPU allocator raise."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


class Scheduler:
    """Runs transcriptions one at a time on a dedicated worker thread."""

    def __init__(self, load: Callable[[], Transcriber], max_queue: int, max_batch: int = 1,
                 deadline_s: float = float("inf"),
                 observe_batch: Callable[[int], None] = lambda size: None) -> None:
        self._load = load
        self._max_batch = max_batch
        self._deadline_s = deadline_s
        self._observe_batch = observe_batch  # called from the worker thread with each batch's size
        self._max_queue = max_queue
        self._waiting: deque[_Job] = deque()  # guarded by _changed
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._stopping = False
        self.load_error: BaseException | None = None
        self.engine: Transcriber | None = None
        self._thread = threading.Thread(target=self._run, name="asr-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def wait_ready(self) -> None:
        """Wait until the model is loaded; raises what loading raised."""
        await asyncio.to_thread(self._ready.wait)
        if self.load_error is not None:
            raise self.load_error

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.load_error is None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    async def submit(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription:
        if not self.ready:
            raise Overloaded("the model is still loading; try again shortly")
        if not self.alive or self._stopping:
            raise InternalError("the inference worker is not running")
        loop = asyncio.get_running_loop()
        job = _Job(samples, options, loop, loop.create_future())
        with self._changed:
            if self._stopping:
                raise InternalError("the inference worker is not running")
            if len(self._waiting) >= self._max_queue:
                raise Overloaded(f"{self._max_queue} requests are already waiting; try again shortly")
            self._waiting.append(job)
            self._changed.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._changed:  # not taken yet: its place in the queue is free again
                if job in self._waiting:
                    self._waiting.remove(job)
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        """Let queued work finish, then end the worker."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            self.engine = self._load()
        except BaseException as exc:  # reported through wait_ready, not lost in a thread
            self.load_error = exc
            self._ready.set()
            return
        self._ready.set()
        batch: list[_Job] | None = []
        engine = self.engine
        try:
            if self._max_batch > 1 and isinstance(engine, ContinuousTranscriber) and engine.continuous:
                engine.transcribe_continuously(self._take_one, self._max_batch, self._observe_batch)
                return
            while (batch := self._take(self._max_batch)) is not None:
                if not batch:
                    continue
                self._observe_batch(len(batch))
                self._run_batch(engine, batch)
        except BaseException:
            # The worker is dying (a fatal error outside any one request): nobody may wait forever.
            dying = InternalError("the inference worker stopped")
            with self._changed:
                self._stopping = True
                waiting, self._waiting = [*(batch or []), *self._waiting], deque()
                self._changed.notify_all()
            for job in waiting:
                job.settle(None, dying)
            raise

    def _run_batch(self, engine: Transcriber, batch: list[_Job]) -> None:
        try:
            results = engine.transcribe_batch([(job.samples, job.options) for job in batch])
        except Exception as exc:  # the whole batch failed: each of its requests hears why
            results = [exc] * len(batch)
        out_of_memory = [job for job, result in zip(batch, results, strict=True)
                         if isinstance(result, Exception) and is_out_of_memory(result)]
        if len(batch) > 1 and out_of_memory:
            half = (len(out_of_memory) + 1) // 2
            self._run_batch(engine, out_of_memory[:half])
            self._run_batch(engine, out_of_memory[half:])
        for job, result in zip(batch, results, strict=True):
            if len(batch) > 1 and job in out_of_memory:
                continue  # settled by the smaller batches
            if isinstance(result, Exception):
                job.settle(None, result)
            else:
                job.settle(result, None)

    def _take_one(self) -> _Job | None:
        """The oldest waiting job still in time, once there is one; None: stopped and drained."""
        while (jobs := self._take(1)) is not None:
            if jobs:
                return jobs[0]
        return None

    def _take(self, limit: int) -> list[_Job] | None:
        """The next batch: the oldest waiting jobs, up to ``limit``; None: stopped and drained."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            if not self._waiting:
                return None
            jobs = [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]
        now = time.monotonic()
        live = []
        for job in jobs:
            waited = now - job.enqueued
            if waited > self._deadline_s:
                job.settle(None, Overloaded(f"waited {waited:.0f} s in the queue; try again later"))
                continue
            live.append(job)
        return live
