"""Where the speech is: silero-vad (its model ships in the PyPI package) on 16 kHz audio.

The VAD gates, it never trims: the engine asks ``speech_regions`` whether
there is speech at all (none: no model call) and which Whisper segments lie
wholly outside speech (dropped). Audio and timestamps are never changed.

silero's streaming model takes one 32 ms frame per call, a Python loop of
hundreds of calls per clip. Its *sequence* model (same package, ONNX) takes
up to 16 s of frames in one call with the same per-frame probabilities and
the same regions, in about a quarter of the time, and holds no state between
calls: any thread may call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    def speech_regions(self, samples: np.ndarray) -> list[SpeechRegion]:
        stamps = self._timestamps(
            samples,
            self._model,
            threshold=self.options.threshold,
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=self.options.min_speech_ms,
            min_silence_duration_ms=self.options.min_silence_ms,
            speech_pad_ms=self.options.pad_ms,
        )
        return [SpeechRegion(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def overlaps_speech(start: float, end: float, regions: list[SpeechRegion]) -> bool:
    """Whether [start, end] touches any speech region."""
    return any(r.start < end and start < r.end for r in regions)
