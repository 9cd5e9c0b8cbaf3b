"""Batching whole decode calls, for CUDA: each window of several requests decoded as one batch.

Each request of a batch runs ``whisper.transcribe`` in a thread of its own:
windows, prompts, temperature fallback and no-speech handling stay exactly
whisper's, per request. Only the model's ``decode`` calls are intercepted:
they meet at a ``DecodeRendezvous``, and once every request still running
has reached one, calls whose options differ at most in the language run as
one batch (stacked mels through the encoder, batched beam search or greedy
with the attention of all audios in one kernel, a language token per
sequence). A failure in a batched call reaches the requests of that call only.

On a GPU this is the better trade: the encoder batches, and a step's cost is
kernel launches, which a batched call pays once for all its audios. On the
CPU the encoder gains nothing from a batch and launches are cheap, so the
engine batches continuously there instead (batching.py), which spares a
batch's short requests the wait for its longest.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from whisper.decoding import DecodingOptions, DecodingResult

# (stacked mels, the options they share, each one's language) -> each one's result
BatchDecode = Callable[[torch.Tensor, DecodingOptions, list[str | None]], list[DecodingResult]]

_local = threading.local()


def current_rendezvous() -> DecodeRendezvous | None:
    """The rendezvous this thread's decode calls go to, if it runs inside a batch."""
    rendezvous: DecodeRendezvous | None = getattr(_local, "rendezvous", None)
    return rendezvous


@dataclass(eq=False)
class _Call:
    mel: torch.Tensor  # (n_mels, frames): transcribe() decodes one window at a time
    options: DecodingOptions
    done: bool = False
    result: DecodingResult | None = None
    error: BaseException | None = None
    key: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Calls batch when every option but the language is the same (the language is one
        # token per sequence); DecodingOptions may hold a prompt list, so the key is made hashable.
        shared = dataclasses.replace(self.options, language=None)
        self.key = tuple(tuple(v) if isinstance(v, list) else v for v in dataclasses.astuple(shared))


class DecodeRendezvous:
    """Where the decode calls of several concurrent transcriptions are gathered and batched.

    The participants (one thread per transcription) only gather; every batch runs on the
    thread that calls ``serve``: the inference worker. torch then always runs on one
    thread, whose OpenMP team and allocator arena stay warm from batch to batch.
    """

    def __init__(self, participants: int) -> None:
        self._cond = threading.Condition()
        self._active = participants
        self._pending: list[_Call] = []

    def run(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` (one transcription) in this thread as a participant."""
        _local.rendezvous = self
        try:
            return work()
        finally:
            _local.rendezvous = None
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def decode(self, mel: torch.Tensor, options: DecodingOptions) -> DecodingResult:
        if mel.ndim != 2:
            raise ValueError("a batched transcription decodes one window at a time")
        call = _Call(mel, options)
        with self._cond:
            self._pending.append(call)
            self._cond.notify_all()
            while not call.done:
                self._cond.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def serve(self, decode_batch: BatchDecode) -> None:
        """Run batches until every participant has finished: each time all those still running
        wait in ``decode``, their pending calls run, batched."""
        while True:
            with self._cond:
                while not (self._pending and len(self._pending) >= self._active) and self._active:
                    self._cond.wait()
                if not self._active:
                    return
                calls, self._pending = self._pending, []
            groups: dict[tuple[Any, ...], list[_Call]] = {}
            for call in calls:
                groups.setdefault(call.key, []).append(call)
            for group in groups.values():
                try:
                    results = decode_batch(torch.stack([c.mel for c in group]), group[0].options,
                                           [c.options.language for c in group])
                except Exception as exc:  # e.g. out of device memory: only this group's requests fail
                    for call in group:
                        call.error = exc
                else:
                    for call, result in zip(group, results, strict=True):
                        call.result = result
            with self._cond:
                for call in calls:
                    call.done = True
                self._cond.notify_all()
