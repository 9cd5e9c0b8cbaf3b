"""Where the speech is: silero-vad (its model ships in the PyPI package) on 16 kHz audio.

The VAD gates, it never trims: the engine asks ``speech_regions`` whether
there is speech at all (none: no model call) and which Whisper segments lie
wholly outside speech (dropped). Audio and timestamps are never changed.

silero's streaming model takes one 32 ms frame per call, a Python loop of
hundreds of calls per clip. Its *sequence* model (same package, ONNX) takes
up to 16 s of frames in one call with the same per-frame probabilities and
the same regions, in about a quarter of the time, and holds no state between
calls: any thread may call it. A long recording takes one call per 16 s
block, and ``speech_regions`` stops between blocks once its caller has
cancelled it (``GateCancelled``), so a client that leaves frees the gate.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000


class GateCancelled(Exception):
    """The caller of ``speech_regions`` cancelled it; the remaining blocks were not run."""


@dataclass(frozen=True)
class SpeechRegion:
    start: float  # seconds
    end: float  # seconds


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    # Generous padding: the VAD only decides what is surely not speech.
    pad_ms: int = 200


class SpeechDetector:
    """silero-vad's sequence model on onnxruntime, one CPU thread."""

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        import torch

        threads = torch.get_num_threads()
        # Importing silero_vad sets torch's global thread count to 1: put it back.
        from silero_vad import get_speech_timestamps_sequence, load_silero_vad

        torch.set_num_threads(threads)
        self._model = load_silero_vad(sequence=True)
        self._timestamps = get_speech_timestamps_sequence
        self.options = options

    def speech_regions(self, samples: np.ndarray, cancelled: threading.Event | None = None
                       ) -> list[SpeechRegion]:
        """The regions of speech; once ``cancelled`` is set, ``GateCancelled`` at the next block."""
        model = self._model
        if cancelled is not None:
            # silero's sequence model runs its blocks through ``session.run``: a copy of the model
            # whose session checks the event first stops between blocks, and shares the weights.
            model = copy.copy(model)
            model.session = _CancellableSession(model.session, cancelled)
        stamps = self._timestamps(
            samples,
            model,
            threshold=self.options.threshold,
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=self.options.min_speech_ms,
            min_silence_duration_ms=self.options.min_silence_ms,
            speech_pad_ms=self.options.pad_ms,
        )
        return [SpeechRegion(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


class StreamingVad:
    """silero's streaming model for one live stream: a probability per 32 ms frame, its state kept.

    Sessions share one loaded model (``load``) and each keeps its own state in a
    shallow copy (silero replaces its state tensors, it never writes into them).
    Not thread-safe: one stream's frames go through one thread at a time.
    """

    FRAME = 512
    # silero's state carries a loud voice's level on: a much quieter one after a pause reads as
    # silence for seconds (measured: a FLEURS clip at -63 dBFS after a LibriSpeech one, 6 s of it
    # unheard). After this many frames of silence the state starts afresh, as for a new stream.
    RESET_AFTER_QUIET = 31  # about 1 s
    QUIET = 0.15

    def __init__(self, model: Any) -> None:
        self._model = copy.copy(model)
        self._model.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._quiet = 0

    @staticmethod
    def load() -> Any:
        import torch

        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad

        torch.set_num_threads(threads)  # importing silero_vad sets it to 1
        return load_silero_vad(onnx=True)

    def probabilities(self, samples: np.ndarray) -> list[float]:
        """One probability for each whole frame completed by ``samples`` (16 kHz float32)."""
        import torch

        audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(audio) // self.FRAME * self.FRAME
        self._pending = audio[whole:].copy()
        found = []
        for i in range(0, whole, self.FRAME):
            probability = float(self._model(torch.from_numpy(audio[i:i + self.FRAME].copy()), SAMPLE_RATE))
            self._quiet = self._quiet + 1 if probability < self.QUIET else 0
            if self._quiet >= self.RESET_AFTER_QUIET:
                self._model.reset_states()
                self._quiet = 0
            found.append(probability)
        return found


class _CancellableSession:
    """An onnxruntime session that refuses the next run once its event is set."""

    def __init__(self, session: Any, cancelled: threading.Event) -> None:
        self._session = session
        self._cancelled = cancelled

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self._cancelled.is_set():
            raise GateCancelled("the speech gate's caller has gone")
        return self._session.run(*args, **kwargs)


def overlaps_speech(start: float, end: float, regions: Sequence[SpeechRegion]) -> bool:
    """Whether [start, end] touches any speech region."""
    return any(r.start < end and start < r.end for r in regions)
