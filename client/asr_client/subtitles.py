"""Segments with times as SubRip (``.srt``) and WebVTT (``.vtt``) subtitles.

Both the client's ``--format srt|vtt`` and the server's OpenAI-compatible
``response_format=srt|vtt`` write subtitles here, so a file looks the same
whichever way it was made. A segment is anything with ``start`` and ``end``
in seconds and ``text``; cues are numbered from 1 in SubRip, as players
expect, and text is stripped of the leading space whisper gives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Timed(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm``; negative times are clamped to zero, hours may pass 99."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both formats, so one inside the text would cut it short.
    lines = [line.strip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def srt(segments: Iterable[Timed]) -> str:
    cues = []
    for number, segment in enumerate((s for s in segments if _cue_text(s.text)), start=1):
        cues.append(f"{number}\n{timestamp(segment.start, ',')} --> {timestamp(segment.end, ',')}\n"
                    f"{_cue_text(segment.text)}\n")
    return "\n".join(cues)


def vtt(segments: Iterable[Timed]) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{_cue_text(s.text)}\n"
            for s in segments if _cue_text(s.text)]
    return "WEBVTT\n\n" + "\n".join(cues)
