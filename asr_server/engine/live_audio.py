"""A live stream's audio: PCM in at the client's rate, 16 kHz out with its speech probabilities, and
the recent audio kept on the session's clock.

``LiveInput.feed`` is the whole per-append cost (s16le to float, soxr's
streaming resampler, silero's streaming VAD): the transport runs it on a
thread of its own, never on the event loop, one append at a time per
session. ``Tape`` holds the session's recent samples (what an open item's
buffer and the prefix padding need), when each piece arrived (what a word's
commit lag and an item's end-of-speech latency are measured from), and where
the VAD heard speech (the regions a decode is handed, so the engine drops
text outside them).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import soxr

from asr_server.engine.vad import SpeechRegion, StreamingVad

SAMPLE_RATE = 16_000


class LiveInput:
    """One session's PCM at ``rate`` to 16 kHz float32, and the VAD's probability per 32 ms frame."""

    def __init__(self, vad_model: Any, rate: int) -> None:
        self.rate = rate
        self.vad = StreamingVad(vad_model)
        self._resampler = None if rate == SAMPLE_RATE else \
            soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def feed(self, pcm: bytes) -> tuple[np.ndarray, list[float]]:
        samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return samples, self.vad.probabilities(samples)


class Tape:
    """The session's recent audio on its 16 kHz clock, and when each piece of it arrived."""

    def __init__(self) -> None:
        self.start = 0
        self.end = 0
        self._chunks: deque[np.ndarray] = deque()
        self._arrivals: deque[tuple[int, float]] = deque()
        self._speech: deque[list[int]] = deque()  # [start, end) of the frames the VAD heard as speech

    def heard_speech(self, start: int, end: int) -> None:
        if self._speech and self._speech[-1][1] >= start:
            self._speech[-1][1] = end
        else:
            self._speech.append([start, end])

    def regions(self, start: int, end: int, pad: int) -> list[SpeechRegion]:
        """The speech between ``start`` and ``end``, widened by ``pad``, in seconds from ``start``."""
        return [SpeechRegion(max(0, s - pad - start) / SAMPLE_RATE, (min(e + pad, end) - start) / SAMPLE_RATE)
                for s, e in self._speech if s < end and e > start]

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(samples)
        self.end += len(samples)
        self._arrivals.append((self.end, time.monotonic()))

    def slice(self, start: int, end: int) -> np.ndarray:
        audio = np.concatenate(list(self._chunks)) if self._chunks else np.zeros(0, np.float32)
        return audio[max(0, start - self.start):max(0, end - self.start)]

    def arrived(self, sample: int) -> float:
        """When the audio up to ``sample`` had arrived."""
        for end, when in self._arrivals:
            if end >= sample:
                return when
        return time.monotonic()

    def forget_before(self, sample: int) -> None:
        while self._chunks and self.start + len(self._chunks[0]) <= sample:
            self.start += len(self._chunks.popleft())
        while len(self._arrivals) > 1 and self._arrivals[0][0] <= self.start:
            self._arrivals.popleft()
        while self._speech and self._speech[0][1] < self.start:
            self._speech.popleft()
