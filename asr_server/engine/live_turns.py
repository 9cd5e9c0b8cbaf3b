"""Turn detection on a live stream: speech started and stopped, from silero's per-frame probabilities.

OpenAI's ``server_vad`` with its three settings: speech starts when a frame's
probability reaches ``threshold`` (reported once it has lasted
``MIN_SPEECH_MS``, so a click opens no item), and the item begins
``prefix_padding_ms`` before it; speech stops after ``silence_duration_ms``
below the threshold (silero's hysteresis: 0.15 under it). The detector also
keeps the regions of speech it heard, which gate the decoding: an item's
audio with no region is never decoded, so silence and noise give no text.

No I/O: frames in (sample positions on the session's 16 kHz clock), turns out.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16_000
FRAME = 512  # samples: silero's frame at 16 kHz (32 ms)
MIN_SPEECH_MS = 250
HYSTERESIS = 0.15


@dataclass(frozen=True)
class SpeechStarted:
    start: int  # the first speech frame's first sample
    at: int  # the sample where it was decided (start + MIN_SPEECH_MS or so)


@dataclass(frozen=True)
class SpeechStopped:
    speech_end: int  # the last speech frame's end
    at: int  # the sample where it was decided: speech_end + the silence duration


Turn = SpeechStarted | SpeechStopped


class TurnDetector:
    def __init__(self, threshold: float, silence_ms: int) -> None:
        self.threshold = threshold
        self.silence = silence_ms * SAMPLE_RATE // 1000
        self.min_speech = MIN_SPEECH_MS * SAMPLE_RATE // 1000
        self.speaking = False  # reported as started
        self._start: int | None = None  # a run of speech not yet reported
        self._speech_end = 0  # the end of the last frame heard as speech
        self._quiet_since: int | None = None

    def frame(self, probability: float, end: int) -> Turn | None:
        """One frame ending at sample ``end``; a turn when one is decided."""
        start = end - FRAME
        loud = probability >= self.threshold
        quiet = probability < self.threshold - HYSTERESIS
        if self._start is None:
            if loud:
                self._start, self._speech_end, self._quiet_since = start, end, None
            return None
        if not quiet:
            self._speech_end, self._quiet_since = end, None
        elif self._quiet_since is None:
            self._quiet_since = start
        if not self.speaking:
            if self._quiet_since is not None and end - self._quiet_since >= self.silence:
                self._start = None  # too short to be speech: a click, a breath
            elif self._speech_end - self._start >= self.min_speech:
                self.speaking = True
                return SpeechStarted(self._start, end)
            return None
        if self._quiet_since is not None and end - self._quiet_since >= self.silence:
            self.speaking, self._start, self._quiet_since = False, None, None
            return SpeechStopped(self._speech_end, end)
        return None

    @property
    def pause_since(self) -> int | None:
        """Where the current pause in reported speech began (None: speaking, or not in speech)."""
        return self._quiet_since if self.speaking else None
