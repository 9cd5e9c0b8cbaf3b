"""Where the speech is: silero-vad (its model ships in the PyPI package) on 16 kHz audio.

The VAD gates, it never trims: the engine asks ``speech_regions`` whether
there is speech at all (none: no model call) and which Whisper segments lie
wholly outside speech (dropped). Audio and timestamps are never changed.
Stateful model: only the inference worker thread may call it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000


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
    """silero-vad on CPU, one thread; it costs a few percent of a Whisper pass."""

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        threads = torch.get_num_threads()
        # Importing silero_vad sets torch's global thread count to 1: put it back.
        from silero_vad import get_speech_timestamps, load_silero_vad

        torch.set_num_threads(threads)
        with warnings.catch_warnings():  # its loader uses deprecated importlib and jit APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = load_silero_vad()
        self._get_speech_timestamps = get_speech_timestamps
        self.options = options

    def speech_regions(self, samples: np.ndarray) -> list[SpeechRegion]:
        # Hundreds of tiny forward passes: more threads only add wake-ups (with OpenMP's
        # passive wait, measured 3-6x slower on 2 threads than on 1).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._speech_regions(samples)
        finally:
            torch.set_num_threads(threads)

    def _speech_regions(self, samples: np.ndarray) -> list[SpeechRegion]:
        with torch.inference_mode():
            stamps = self._get_speech_timestamps(
                torch.from_numpy(samples),
                self._model,
                threshold=self.options.threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=self.options.min_speech_ms,
                min_silence_duration_ms=self.options.min_silence_ms,
                speech_pad_ms=self.options.pad_ms,
            )
        self._model.reset_states()
        return [SpeechRegion(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def overlaps_speech(start: float, end: float, regions: list[SpeechRegion]) -> bool:
    """Whether [start, end] touches any speech region."""
    return any(r.start < end and start < r.end for r in regions)
