"""A request as the engine sees it: the typed job the scheduler (or a list of requests) hands over.

The decoding loop and the transcriber read a job through ``Job`` alone, so
whoever queues requests (the scheduler, ``Engine.transcribe_batch``, a
script) declares every field they read, and the engine imports nothing of
the scheduler. ``Speech`` is what the speech gate found before the job was
handed over, or that it has not run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from asr_server.contract.domain import Segment, TranscribeOptions, Transcription
from asr_server.engine.vad import SpeechRegion


@dataclass(frozen=True)
class Speech:
    """The speech gate's verdict on a job's audio."""

    checked: bool  # the gate has run, or must not: the engine does not run it again
    regions: Sequence[SpeechRegion] | None = None  # None: no gate judged it, all of it may be speech


UNCHECKED = Speech(checked=False)  # the engine runs its gate (if it has one) when it takes the job
UNGATED = Speech(checked=True)  # the model runs on all of it, with no gate


class Job(Protocol):
    """Everything the engine reads of a request, and how it answers it."""

    @property
    def samples(self) -> np.ndarray: ...  # 16 kHz mono float32

    @property
    def options(self) -> TranscribeOptions: ...

    @property
    def speech(self) -> Speech: ...

    @property
    def on_segments(self) -> Callable[[list[Segment]], None] | None:
        """Called on the worker thread as each window's segments become final; None: nobody listens."""
        ...

    @property
    def abandoned(self) -> bool:
        """Its caller has gone: the loop drops it at its next pass."""
        ...

    def settle(self, result: Transcription | None, error: BaseException | None) -> None: ...


class Source(Protocol):
    """Where the worker takes jobs from: the scheduler, or a list (``Engine.transcribe_batch``)."""

    def next(self, block: bool) -> Job | None:
        """The next job; with ``block``, wait for one (None then means: stopped and drained)."""
        ...
