"""The single inference worker and the bounded queue in front of it.

One thread owns the engine (it loads the model and runs every transcription),
so torch never runs on the event loop and at most one model call runs at a
time. ``submit`` is the only way in: a full queue answers ``overloaded`` at
once instead of letting latency grow without bound, and a request whose
caller has gone (its awaiting task cancelled) is skipped before it reaches
the model.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from asr_server.errors import InternalError, Overloaded
from asr_server.protocol import TranscribeOptions, Transcription


class Transcriber(Protocol):
    def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription: ...


@dataclass(eq=False)
class _Job:
    samples: np.ndarray
    options: TranscribeOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Transcription]
    cancelled: bool = field(default=False)


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
    """Runs transcriptions one at a time on a dedicated worker thread."""

    def __init__(self, load: Callable[[], Transcriber], max_queue: int,
                 observe_batch: Callable[[int], None] = lambda size: None) -> None:
        self._load = load
        self._observe_batch = observe_batch  # called from the worker thread with each model call's size
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
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
        return self._queue.qsize()

    async def submit(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription:
        if not self.ready:
            raise Overloaded("the model is still loading; try again shortly")
        if not self.alive or self._stopping:
            raise InternalError("the inference worker is not running")
        loop = asyncio.get_running_loop()
        job = _Job(samples, options, loop, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                f"{self._queue.maxsize} requests are already waiting; try again shortly"
            ) from None
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # the worker skips it if it has not started yet
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        """Let queued work finish, then end the worker."""
        self._stopping = True
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                return
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            self.engine = self._load()
        except BaseException as exc:  # reported through wait_ready, not lost in a thread
            self.load_error = exc
            self._ready.set()
            return
        self._ready.set()
        while (job := self._queue.get()) is not None:
            if job.cancelled:
                continue
            result: Transcription | None = None
            error: BaseException | None = None
            self._observe_batch(1)
            try:
                result = self.engine.transcribe(job.samples, job.options)
            except Exception as exc:  # delivered to the caller, who logs it with its request id
                error = exc
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
