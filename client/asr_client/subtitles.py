"""Segments with times as SubRip (``.srt``) and WebVTT (``.vtt``) subtitles, written by pysubs2.

A segment is anything with ``start`` and ``end`` in seconds and ``text``.
Each cue's text is one line (a blank line would end a cue in both formats),
empty cues are left out, and negative times are clamped to zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pysubs2


class Timed(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


def subtitles(segments: Iterable[Timed], fmt: str) -> str:
    """``fmt``: ``srt`` or ``vtt``."""
    cues = pysubs2.SSAFile()
    for segment in segments:
        cue = pysubs2.SSAEvent(start=max(0, round(segment.start * 1000)),
                               end=max(0, round(segment.end * 1000)))
        cue.plaintext = " ".join(segment.text.split())
        if cue.plaintext:
            cues.append(cue)
    return str(cues.to_string(fmt))


def srt(segments: Iterable[Timed]) -> str:
    return subtitles(segments, "srt")


def vtt(segments: Iterable[Timed]) -> str:
    return subtitles(segments, "vtt")
