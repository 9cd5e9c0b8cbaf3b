"""The single inference worker and the bounded queue in front of it.

One thread owns the engine (it loads the model and runs every transcription),
so torch never runs on the event loop. ``submit`` is the only way in: a full
queue answers ``overloaded`` at once instead of letting latency grow without
bound. The engine pulls requests through ``next`` (decoding_loop.py: up to
``max_batch`` run at once, each admitted as soon as a place is free and
answered the moment it is done). A request whose caller has gone (its
awaiting task cancelled) leaves the queue at once, freeing its place and its
audio, and never reaches the model; one already running is dropped by the
loop at its next iteration. One that waited past ``deadline_s`` is answered
``overloaded`` rather than run late. If the worker dies, every request it
held or that waits hears so instead of waiting forever.

An engine with a speech gate (``GatedTranscriber``: the VAD, onnxruntime, no
torch) has it run here, in a thread of its own, before the request is queued:
a 30-minute upload's VAD then holds up no one else's decoding, and a caller
that leaves while its gate runs stops it at the gate's next block. A request at
the gate, or waiting for it, counts toward the queue's bound and its depth,
and its wait there toward its deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from asr_server.contract.domain import Segment, TranscribeOptions, Transcription
from asr_server.contract.errors import InternalError, Overloaded
from asr_server.engine.job import UNCHECKED, Source, Speech


class Transcriber(Protocol):
    def serve(self, source: Source, capacity: int, observe_pass: Callable[[int], None]) -> None:
        """Run requests taken from ``source.next`` until it gives None when told to block."""
        ...


@runtime_checkable
class GatedTranscriber(Transcriber, Protocol):
    def speech(self, samples: np.ndarray, cancelled: threading.Event | None = None) -> Speech:
        """Where the speech is (any thread may call it), handed to the engine with the request;
        it stops early (raising) once ``cancelled`` is set."""
        ...


@dataclass(eq=False)
class _Job:
    samples: np.ndarray
    options: TranscribeOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Transcription]
    enqueued: float = field(default_factory=time.monotonic)
    speech: Speech = UNCHECKED
    listener: Callable[[list[Segment]], None] | None = None  # called on the event loop

    @property
    def on_segments(self) -> Callable[[list[Segment]], None] | None:
        """What the engine calls (on the worker thread) as segments become final, if anyone listens."""
        return self._report if self.listener is not None else None

    def _report(self, segments: list[Segment]) -> None:
        if self.listener is not None and not self.future.done():
            try:
                self.loop.call_soon_threadsafe(self.listener, segments)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    @property
    def abandoned(self) -> bool:
        """Its caller has gone (read from the worker thread: a late answer is dropped anyway)."""
        return self.future.done()

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


class Scheduler:
    """The bounded queue in front of the one worker thread, which runs up to ``max_batch`` at once."""

    def __init__(self, load: Callable[[], Transcriber], max_queue: int, max_batch: int = 1,
                 deadline_s: float = float("inf"),
                 observe_batch: Callable[[int], None] = lambda size: None) -> None:
        self._load = load
        self._max_batch = max_batch
        self._deadline_s = deadline_s
        self._observe_batch = observe_batch  # called from the worker thread with each pass's size
        self._max_queue = max_queue
        self._waiting: deque[_Job] = deque()  # guarded by _changed
        self._taken: list[_Job] = []  # handed to the engine: settled by it, or by a dying worker
        self._gating = 0  # at the speech gate or waiting for it (touched on the event loop only)
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._stopping = False
        self.load_error: BaseException | None = None
        self.engine: Transcriber | None = None
        self._thread = threading.Thread(target=self._run, name="asr-worker", daemon=True)
        # One thread: the gate is cheap beside decoding, and must not take every core from it.
        self._gate = ThreadPoolExecutor(1, thread_name_prefix="asr-vad")

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
        """Requests waiting for the model, those at its speech gate included."""
        return len(self._waiting) + self._gating

    async def submit(self, samples: np.ndarray, options: TranscribeOptions,
                     listener: Callable[[list[Segment]], None] | None = None,
                     speech: Speech = UNCHECKED) -> Transcription:
        """The transcription; ``listener`` (optional) hears each window's final segments first.
        ``speech``: where the caller already knows the speech is (a live stream's own VAD), so the
        gate does not run again."""
        if not self.ready:
            raise Overloaded("the model is still loading; try again shortly")
        if not self.alive or self._stopping:
            raise InternalError("the inference worker is not running")
        loop = asyncio.get_running_loop()
        job = _Job(samples, options, loop, loop.create_future(), listener=listener, speech=speech)
        if isinstance(self.engine, GatedTranscriber) and not speech.checked:
            self._refuse_if_full()  # before the gate's work, not only after it
            self._gating += 1
            cancelled = threading.Event()
            try:
                job.speech = await loop.run_in_executor(self._gate, self.engine.speech, samples, cancelled)
            except asyncio.CancelledError:
                cancelled.set()  # not started: the executor drops it; running: it stops at its next block
                raise
            finally:
                self._gating -= 1
        with self._changed:
            if self._stopping:
                raise InternalError("the inference worker is not running")
            if len(self._waiting) >= self._max_queue:
                raise self._full()
            self._waiting.append(job)
            self._changed.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._changed:  # not taken yet: its place in the queue is free again
                if job in self._waiting:
                    self._waiting.remove(job)
            raise

    def _refuse_if_full(self) -> None:
        if len(self._waiting) + self._gating >= self._max_queue:
            raise self._full()

    def _full(self) -> Overloaded:
        return Overloaded(f"{self._max_queue} requests are already waiting; try again shortly")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let queued work finish, then end the worker; the event loop goes on serving meanwhile."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._gate.shutdown(wait=False)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout_s)

    def _run(self) -> None:
        try:
            self.engine = self._load()
        except BaseException as exc:  # reported through wait_ready, not lost in a thread
            self.load_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.engine.serve(self, self._max_batch, self._observe_batch)
        except BaseException:
            # The worker is dying (a fatal error outside any one request): nobody may wait forever.
            dying = InternalError("the inference worker stopped")
            with self._changed:
                self._stopping = True
                waiting, self._waiting = [*self._taken, *self._waiting], deque()
                self._changed.notify_all()
            for job in waiting:
                job.settle(None, dying)
            raise

    def next(self, block: bool) -> _Job | None:
        """The oldest waiting job still in time; with ``block``, wait for one (None: stopped and drained)."""
        while True:
            with self._changed:
                self._taken = [job for job in self._taken if not job.future.done()]
                while not self._waiting:
                    if self._stopping or not block:
                        return None
                    self._changed.wait()
                job = self._waiting.popleft()
                self._taken.append(job)
            waited = time.monotonic() - job.enqueued
            if waited <= self._deadline_s:
                return job
            job.settle(None, Overloaded(f"waited {waited:.0f} s in the queue; try again later"))
