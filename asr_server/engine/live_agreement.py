"""LocalAgreement-2 for a live item: which words two hypotheses in a row agree on, and where to cut.

A live item's unconfirmed audio (its buffer) is decoded again about once a
second of new audio. Each decode is a ``Hypothesis``: its words, and where
its segments end. ``Agreement.update`` commits the longest prefix that the
new hypothesis shares with the last one, past the words already committed;
those words never change again, and the rest is the tentative tail.

The buffer still holds the audio of words already committed until it is cut:
each hypothesis spells them again, and ``_past_committed`` finds where they end
in it (exactly when the model repeats itself, by alignment when it does not).
``cut`` picks the end of the last segment that holds only committed words
once the buffer passes ``trim_after_s``, so the buffer stays short and its
decode cheap; past ``force_after_s`` with no such segment, the
hypothesis's whole segments are committed as they stand (``force``), so the
buffer can never outgrow one 30 s window.

``LiveItem`` is one item's state on the session's 16 kHz clock. No I/O and no
torch: the live session (``live_session.py``) drives both.
"""

from __future__ import annotations

import difflib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from asr_server.contract.domain import Segment

_FOLD = re.compile(r"[^\w]+")
# whisper's own limit: text that compresses better than this is a loop ("the the the ...").
MAX_COMPRESSION_RATIO = 2.4
MIN_LOOP_WORDS = 3


@dataclass(frozen=True)
class Hypothesis:
    words: tuple[str, ...]
    segment_ends: tuple[tuple[int, float], ...]  # (words up to the end of the segment, its end in s)


def hypothesis_of(segments: Sequence[Segment]) -> Hypothesis:
    """A decode's words, with a phrase said twice in a row said once (``_loop``)."""
    words: list[str] = []
    ends: list[tuple[int, float]] = []
    for segment in segments:
        words.extend(segment.text.split())
        ends.append((len(words), segment.end))
    while (loop := _loop(words)) is not None:
        at, length = loop
        del words[at:at + length]
        ends = [(count - min(length, max(0, count - at)), end) for count, end in ends]
    return Hypothesis(tuple(words), tuple(ends))


def _loop(words: Sequence[str]) -> tuple[int, int] | None:
    """Where a phrase of ``MIN_LOOP_WORDS`` or more comes again right after itself: (the second copy's
    first word, its length). On a second or two of audio after a prompt, whisper sometimes says
    the turn's words twice ("With this measure, with this measure,"): a loop too short for the
    compression-ratio test. A speaker restarting says a word or two again, not a whole phrase."""
    folded = [_fold(word) for word in words]
    for length in range(len(folded) // 2, MIN_LOOP_WORDS - 1, -1):
        for at in range(len(folded) - length, length - 1, -1):  # the latest: copies end where segments do
            phrase = folded[at:at + length]
            if folded[at - length:at] == phrase and sum(map(bool, phrase)) >= MIN_LOOP_WORDS:
                return at, length
    return None


def spell(words: Sequence[str], first: bool) -> str:
    """Words as text; each after the item's first keeps a leading space, so deltas join into the text."""
    text = " ".join(words)
    return text if first or not text else " " + text


def repetitive(text: str) -> bool:
    """whisper's compression-ratio test: a loop of words is a hallucination, never a prompt."""
    data = text.encode()
    return len(data) > 24 and len(data) / len(zlib.compress(data)) > MAX_COMPRESSION_RATIO


def _fold(word: str) -> str:
    return _FOLD.sub("", word.lower())


class Agreement:
    """One live item's committed words and its last hypothesis's unconfirmed ones."""

    def __init__(self, trim_after_s: float = 15.0, force_after_s: float = 25.0) -> None:
        self.trim_after_s = trim_after_s
        self.force_after_s = force_after_s
        self.in_buffer: list[str] = []  # committed words whose audio is still in the buffer
        self.tentative: tuple[str, ...] = ()  # the last hypothesis past the committed words
        self._seen = False

    def update(self, hypothesis: Hypothesis) -> list[str]:
        """The newly committed words (LocalAgreement-2), spelled as the newer hypothesis has them;
        the rest becomes ``tentative``."""
        start = self._past_committed(hypothesis.words)
        tail = hypothesis.words[start:]
        if not self._seen:
            self._seen, self.tentative = True, tail
            return []
        agreed = 0
        for previous, current in zip(self.tentative, tail, strict=False):
            # Agreement on the words, not their case or punctuation: whisper capitalises a
            # sentence's first word or not, and ends a buffer's last word with a period, by turns.
            if _fold(previous) != _fold(current):
                break
            agreed += 1
        new = list(tail[:agreed])
        self.in_buffer.extend(new)
        self.tentative = tail[agreed:]
        return new

    def finish(self, hypothesis: Hypothesis) -> list[str]:
        """The end of the item: every word past the committed ones is final."""
        new = list(hypothesis.words[self._past_committed(hypothesis.words):])
        self.in_buffer.extend(new)
        self.tentative = ()
        return new

    def cut(self, hypothesis: Hypothesis, buffer_s: float, after_s: float | None = None) -> float:
        """Seconds to cut from the buffer's front (0: none): the last segment end with only committed
        words before it, once the buffer is longer than ``after_s`` (``trim_after_s`` unless given)."""
        if buffer_s <= (self.trim_after_s if after_s is None else after_s):
            return 0.0
        committed_end = self._past_committed(hypothesis.words)
        best = (0, 0.0)
        for words, end in hypothesis.segment_ends:
            if words <= committed_end and 0.0 < end < buffer_s:
                best = (words, end)
        if best[0] == 0:
            return 0.0
        self._drop(best[0], committed_end)
        return best[1]

    def force(self, hypothesis: Hypothesis, buffer_s: float) -> tuple[list[str], float]:
        """Past ``force_after_s`` with nothing to cut: commit the whole segments but the last (all of
        them if only one), and cut after them. Returns the words committed and the seconds cut."""
        if buffer_s <= self.force_after_s or not hypothesis.segment_ends:
            return [], 0.0
        ends = hypothesis.segment_ends
        words, end = ends[-2] if len(ends) > 1 else ends[-1]
        if end <= 0.0:
            return [], 0.0
        start = self._past_committed(hypothesis.words)
        new = list(hypothesis.words[start:words]) if words > start else []
        self.in_buffer.extend(new)
        self._drop(words, start + len(new))
        self.tentative = hypothesis.words[max(words, start):]
        return new, min(end, buffer_s)

    def _drop(self, words: int, committed_end: int) -> None:
        """The buffer loses the audio of its first ``words`` hypothesis words, all committed."""
        surplus = committed_end - len(self.in_buffer)  # the hypothesis spelled a few more or fewer
        del self.in_buffer[:max(0, min(len(self.in_buffer), words - surplus))]

    def _past_committed(self, words: Sequence[str]) -> int:
        """Where the committed words still in the buffer end in a hypothesis."""
        done = self.in_buffer
        if not done:
            return 0
        if tuple(words[:len(done)]) == tuple(done):
            return len(done)
        matcher = difflib.SequenceMatcher(None, [_fold(w) for w in done], [_fold(w) for w in words],
                                          autojunk=False)
        blocks = [b for b in matcher.get_matching_blocks() if b.size]
        if not blocks:
            return min(len(done), len(words))
        last = blocks[-1]
        return min(len(words), last.b + last.size + (len(done) - last.a - last.size))


@dataclass(eq=False)
class LiveItem:
    """One live item: where its audio lies on the session's clock, its agreement and its text so far."""

    id: str
    start: int  # session samples
    buffer_start: int
    agreement: Agreement
    end: int | None = None  # set when the turn ends (speech stopped, commit)
    speech_end: int | None = None
    ended_at: float = 0.0  # monotonic time the turn's last speech (or its commit) arrived
    decoded_to: int = 0  # the end of the audio of the last decode started
    deltas: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    language: str | None = None
    started: int = 0  # decodes started; two may run at once (a pause's beside the worker's)
    applied: int = 0  # the latest of them whose result is in: an older one is dropped
    last: tuple[Hypothesis, int, int, str] | None = None  # the last hypothesis, its start, end, language

    def reading(self, hypothesis: Hypothesis) -> str:
        """The item as its last decode reads it: the committed words before the buffer, then that
        decode's words for all the buffer. The committed words were agreed on with less of the turn
        heard; this reading, with all of it, is the better prompt for the items after."""
        if not hypothesis.words:
            return "".join(self.deltas)
        before = self.words[:len(self.words) - len(self.agreement.in_buffer)]
        return spell([*before, *hypothesis.words], True)

    def heard_all(self, start: int, end: int, pause: float) -> bool:
        """A decode of the buffer from ``start`` to ``end`` heard all of the ended turn's speech."""
        return (self.end is not None and self.speech_end is not None and start == self.buffer_start
                and end >= self.speech_end + pause)
