"""The reply judge: is an LLM's reply a correction of the transcript, or something else?

``judge_correction`` owns the verdict. Cheap checks come first (empty, preamble,
added lines or quotes, length, script); then ``compare`` measures how far the
reply's words and characters are from the transcript's.

``compare`` leaves the quadratic work to RapidFuzz (C++, bit-parallel), so a
30-minute transcript costs milliseconds, not seconds (docs/reliability.md,
"The reply judge's cost"):

- Words: RapidFuzz's Levenshtein alignment of the two word lists
  (``Levenshtein.opcodes``), from which come the word edits and the path
  through the alignment. The path's *drift* is how far it strays from the
  proportional diagonal (the one that runs from the start of both texts to the
  end of both, so a reply that is uniformly a little shorter stays on it). A
  drift of over ``MAX_DRIFT_WORDS`` words is a run of words dropped or added in
  one place: a cut or a padding, not a correction, however few words it is of
  a long transcript. Short texts (either side at most ``MAX_DRIFT_WORDS``
  words) are judged by their edits alone.
- Characters: the texts, spaces removed (so "hyper tension" may become
  "hypertension"), are compared chunk by chunk along that word alignment,
  never as a whole. A chunk ends at a matched word once it holds
  ``CHUNK_WORDS`` words of the transcript, and in any case before either side
  holds ``2 * CHUNK_WORDS``; each pair is compared by RapidFuzz's Indel
  distance (insertions and deletions: twice the longest common subsequence
  over the lengths, the measure difflib's ratio approximates), and the
  similarity is ``1 - sum(distances) / sum(lengths)``. Each chunk's cost is
  bounded, so the total is linear. Chunks only constrain the alignment, so this
  similarity is never above the whole-text one: stricter, never looser.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass

from rapidfuzz.distance import Indel, Levenshtein

MAX_DRIFT_WORDS = 16
CHUNK_WORDS = 40

# What a chatty model puts before or around the text, in the supported languages it favours.
_PREAMBLE = re.compile(
    r"^\s*(here('s| is| are)|sure|certainly|of course|okay|ok[,!.]|corrected|the corrected|correction"
    r"|i('ve| have) corrected|transcript:|voici|bien sûr|hier ist|gerne|natürlich|aquí|claro"
    r"|ето|разбира се|вот|конечно|ecco|certo)\b",
    re.IGNORECASE,
)
_QUOTES = "\"'“”„«»‘’`"


@dataclass(frozen=True)
class GuardLimits:
    """How far a reply may stray from the transcript and still be a correction of it."""

    max_word_edit_rate: float = 0.2  # word edits / transcript words, after normalisation
    min_char_similarity: float = 0.85  # chunked Indel similarity of the normalised texts, spaces removed
    max_length_ratio: float = 1.5
    min_length_ratio: float = 0.6
    min_script_share: float = 0.8  # of the reply's letters in the transcript's script


@dataclass(frozen=True)
class Comparison:
    """What ``compare`` measured, and the work it did (the unit tests bound it)."""

    word_edits: int
    char_similarity: float
    drift_words: float  # the alignment's furthest stray from the proportional diagonal (0: short texts)
    char_cells: int  # sum over chunks of len(a) * len(b): the most a chunk's comparison can cost


def normalise_words(text: str) -> list[str]:
    """Lowercase words without punctuation: what a correction may not change much."""
    cleaned = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return cleaned.split()


def strip_fence(reply: str) -> str:
    """Drop echoed delimiters, and whatever a model invents after its answer in a new pair of them."""
    text = re.sub(r"^\s*<transcript>", "", reply)
    return re.split(r"</?transcript>", text, maxsplit=1)[0].strip()


def judge_correction(original: str, reply: str, limits: GuardLimits = GuardLimits()) -> str | None:
    """None if ``reply`` is a correction of ``original``; else a short reason to reject it."""
    text = strip_fence(reply)
    if not text:
        return "empty reply"
    if _PREAMBLE.match(text) or re.match(r"^[^\n]{0,80}:\s*\n", text):
        return "reply has a preamble"
    if "\n" in text and "\n" not in original.strip():
        return "reply adds lines"
    source = original.strip()
    if text[0] in _QUOTES and text[-1] in _QUOTES and not (source[:1] in _QUOTES and source[-1:] in _QUOTES):
        return "reply adds quotes"
    ratio = len(text) / max(len(source), 1)
    if ratio > limits.max_length_ratio and len(text) - len(source) > 10:
        return "reply is far longer than the transcript"
    if ratio < limits.min_length_ratio and len(source) - len(text) > 10:
        return "reply is far shorter than the transcript"
    script, _ = _dominant_script(source)
    _, reply_counts = _dominant_script(text)
    letters = sum(reply_counts.values())
    if script and letters and reply_counts.get(script, 0) / letters < limits.min_script_share:
        return "reply is in another script"
    before = normalise_words(source)
    allowed_edits = max(1, round(limits.max_word_edit_rate * len(before)))
    measured = compare(before, normalise_words(text))
    if (measured.word_edits > allowed_edits or measured.drift_words > MAX_DRIFT_WORDS
            or measured.char_similarity < limits.min_char_similarity):
        return "reply is not a correction of the transcript (another language, an answer, or a rewrite)"
    return None


def compare(before: list[str], after: list[str]) -> Comparison:
    """Word edits, drift and chunked character similarity of two normalised word lists (module docstring)."""
    edits, path = _alignment(before, after)
    distance = total = char_cells = 0
    for (p0, q0), (p1, q1) in _chunks(before, after, path):
        a, b = "".join(before[p0:p1]), "".join(after[q0:q1])
        distance += Indel.distance(a, b)
        total += len(a) + len(b)
        char_cells += len(a) * len(b)
    similarity = 1.0 - distance / total if total else 1.0
    return Comparison(edits, similarity, _drift(path, len(before), len(after)), char_cells)


def _alignment(a: list[str], b: list[str]) -> tuple[int, list[tuple[int, int]]]:
    """The word Levenshtein distance and its path as (index in a, index in b), from (0, 0) on."""
    path = [(0, 0)]
    edits = 0
    # The hint (about a correction's share of edits) lets RapidFuzz fill a band, widened until the
    # distance fits: 18,000 words hold the GIL 9 ms instead of 40 (docs/reliability.md).
    hint = max(4 * MAX_DRIFT_WORDS, max(len(a), len(b)) // 32)
    for op in Levenshtein.opcodes(a, b, score_hint=hint):
        a0, a1, b0, b1 = op.src_start, op.src_end, op.dest_start, op.dest_end
        steps = max(a1 - a0, b1 - b0)
        if op.tag != "equal":
            edits += steps
        for k in range(1, steps + 1):  # diagonal while both sides have words, then straight on
            path.append((min(a0 + k, a1), min(b0 + k, b1)))
    return edits, path


def _drift(path: list[tuple[int, int]], n_a: int, n_b: int) -> float:
    """How far the path strays from the proportional diagonal, counted in the shorter side's words."""
    if min(n_a, n_b) <= MAX_DRIFT_WORDS:
        return 0.0
    if n_a >= n_b:
        return max(abs(j - i * n_b / n_a) for i, j in path)
    return max(abs(i - j * n_a / n_b) for i, j in path)


def _chunks(a: list[str], b: list[str], path: list[tuple[int, int]]
            ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Consecutive pieces of the alignment: ((start in a, start in b), (end in a, end in b))."""
    pieces = []
    start = path[0]
    for (p0, q0), (p1, q1) in itertools.pairwise(path):
        matched = p1 > p0 and q1 > q0 and a[p0] == b[q0]
        held_a, held_b = p1 - start[0], q1 - start[1]
        if (matched and held_a >= CHUNK_WORDS) or max(held_a, held_b) >= 2 * CHUNK_WORDS:
            pieces.append((start, (p1, q1)))
            start = (p1, q1)
    if start != path[-1]:
        pieces.append((start, path[-1]))
    return pieces


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else ""


def _dominant_script(text: str) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            script = _script(ch)
            counts[script] = counts.get(script, 0) + 1
    return (max(counts, key=lambda k: counts[k]) if counts else ""), counts
