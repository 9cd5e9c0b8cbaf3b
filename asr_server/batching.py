"""Continuous batching: every running request's next decoder step, taken in one pass on the worker thread.

Each request runs openai-whisper's own ``transcribe`` in a participant thread
of its own: windows, prompts, temperature fallback, no-speech handling, the
search and the logit filters stay whisper's, per request. Only the model's
work is carried to the worker thread, through ``DecoderSteps``:

- one-off calls (the encoder on a window, language detection, a decode
  call's prompt) run there one at a time;
- once every decode call in progress has asked for its next token, one
  decoder pass computes them all (``serve``'s ``run_steps``).

Requests join and leave between two steps. A new one waits for no batch to
finish, and a decode that ends early frees its place at once: the decoder
no longer runs a batch's last steps for one or two stragglers. A step that
fails is retried in halves, so a failure (out of device memory) reaches
only the decode calls too big to step alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")

# (each decode call's state, its new tokens) -> each one's logits for the next token
RunSteps = Callable[[Sequence[Any], Sequence[torch.Tensor]], Sequence[torch.Tensor]]

_local = threading.local()


def current_steps() -> DecoderSteps | None:
    """The continuous batch this thread's model calls go to, if it runs inside one."""
    steps: DecoderSteps | None = getattr(_local, "steps", None)
    return steps


@dataclass(eq=False)
class _Pending(Generic[T]):
    # Each participant waits on its own event: a post or a finished pass wakes only
    # those it concerns, not every waiting thread (each of which needs the GIL).
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Call(_Pending[Any]):
    work: Callable[[], Any] = lambda: None


@dataclass(eq=False)
class _Step(_Pending[torch.Tensor]):
    state: Any = None
    tokens: torch.Tensor | None = None


class DecoderSteps:
    """Where the model calls of concurrent transcriptions meet the one thread that runs the model.

    Participants (one thread per transcription) post calls and steps and wait;
    the worker thread, in ``serve``, runs them. torch then always runs on one
    thread, whose OpenMP team and allocator arena stay warm from step to step.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: list[_Call] = []
        self._steps: list[_Step] = []
        self._decoding = 0  # decode calls past their prompt: each will ask for a step or end
        self._participants = 0
        self._admitting = True
        self._failure: Exception | None = None

    # -- the admitting side

    def join(self) -> None:
        """A participant is about to start: ``serve`` keeps running until it has finished."""
        with self._cond:
            self._participants += 1

    def close(self) -> None:
        """No participant will join any more: ``serve`` returns once the last one has finished."""
        with self._cond:
            self._admitting = False
            self._cond.notify_all()

    # -- the participants' side

    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` (one transcription) in this thread as a participant that has joined."""
        _local.steps = self
        try:
            return work()
        finally:
            _local.steps = None
            with self._cond:
                self._participants -= 1
                self._cond.notify_all()

    def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the worker thread, on its own."""
        call = _Call(work=work)
        with self._cond:
            self._calls.append(call)
        result: T = self._wait(call)
        return result

    def begin_decoding(self) -> None:
        """This thread's decode call has started: steps wait for it until ``end_decoding``."""
        with self._cond:
            self._decoding += 1

    def end_decoding(self) -> None:
        with self._cond:
            self._decoding -= 1
            self._cond.notify_all()

    def step(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of the next token, computed together with every other decode call's."""
        step = _Step(state=state, tokens=tokens)
        with self._cond:
            self._steps.append(step)
        result: torch.Tensor = self._wait(step)
        return result

    def _wait(self, pending: _Pending[Any]) -> Any:
        with self._cond:
            if self._failure is not None:
                raise self._failure
            self._cond.notify()  # only the worker waits on the condition
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    # -- the worker's side

    def serve(self, run_steps: RunSteps, before_each: Callable[[], None] = lambda: None,
              observe_step: Callable[[int], None] = lambda size: None) -> None:
        """Run calls and steps as they come until ``close`` and the last participant's end.

        A step runs once every decode call in progress has asked for one, so
        each pass carries all of them. ``before_each`` runs before each round.
        """
        in_flight: tuple[_Pending[Any], ...] = ()
        try:
            while (work := self._next_round()) is not None:
                calls, steps = work
                in_flight = (*calls, *steps)
                before_each()
                for call in calls:
                    try:
                        call.result = call.work()
                    except Exception as exc:  # reaches that call's participant only
                        call.error = exc
                if steps:
                    observe_step(len(steps))
                    self._run_steps(run_steps, steps)
                for pending in in_flight:
                    pending.done.set()
                in_flight = ()
        except BaseException as exc:
            stopped = RuntimeError("the inference worker stopped")
            stopped.__cause__ = exc
            self._abandon(stopped, in_flight)
            raise

    def _next_round(self) -> tuple[list[_Call], list[_Step]] | None:
        with self._cond:
            while True:
                steps_ready = bool(self._steps) and len(self._steps) >= self._decoding
                if self._calls or steps_ready:
                    calls, self._calls = self._calls, []
                    steps: list[_Step] = []
                    if steps_ready:
                        steps, self._steps = self._steps, []
                    return calls, steps
                if not self._admitting and not self._participants:
                    return None
                self._cond.wait()

    def _run_steps(self, run_steps: RunSteps, steps: list[_Step]) -> None:
        try:
            results = run_steps([s.state for s in steps], [s.tokens for s in steps if s.tokens is not None])
        except Exception as exc:
            if len(steps) == 1:
                steps[0].error = exc
                return
            # e.g. out of device memory: halves may fit; only a decode too big alone fails.
            half = len(steps) // 2
            self._run_steps(run_steps, steps[:half])
            self._run_steps(run_steps, steps[half:])
            return
        for step, result in zip(steps, results, strict=True):
            step.result = result

    def _abandon(self, failure: Exception, in_flight: tuple[_Pending[Any], ...]) -> None:
        """The worker is dying: every participant waiting now or later hears why, and none hangs."""
        with self._cond:
            self._failure = failure
            abandoned = (*in_flight, *self._calls, *self._steps)
            self._calls, self._steps = [], []
        for pending in abandoned:
            pending.error = failure
            pending.done.set()
