"""The post-processing guard: is an LLM's reply a correction of the transcript, or something else?

``judge_correction`` owns the verdict. Cheap checks come first (empty, preamble,
added lines or quotes, length, script); then ``compare`` measures how far the
reply's words and characters are from the transcript's.

``compare`` does work linear in the transcript's length, so a 30-minute
transcript costs milliseconds, not seconds (docs/postprocess.md, Guard cost):

- Words: a Levenshtein distance over words, filled only within ``BAND_WORDS`` of
  the diagonal that runs from the start of both texts to the end of both (the
  proportional diagonal, so a reply that is uniformly a little shorter stays
  on it). Each row of the table holds at most ``2 * BAND_WORDS + 1`` cells, so
  the table grows with the number of words, not with its square. A path that
  leaves the band (a run of over ``BAND_WORDS`` words dropped or added in one
  place) is not considered: the banded distance is never below the true one,
  so the band can only make the guard stricter, and such a reply is a cut or
  a padding, not a correction. Short texts (either side at most
  ``BAND_WORDS`` words) get the exact distance.
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

from rapidfuzz.distance import Indel

BAND_WORDS = 16
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
    word_cells: int  # cells of the word table filled
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
    if measured.word_edits > allowed_edits or measured.char_similarity < limits.min_char_similarity:
        return "reply is not a correction of the transcript (another language, an answer, or a rewrite)"
    return None


def compare(before: list[str], after: list[str]) -> Comparison:
    """Word edits and chunked character similarity of two normalised word lists (module docstring)."""
    edits, path, word_cells = _banded_alignment(before, after)
    distance = total = char_cells = 0
    for (p0, q0), (p1, q1) in _chunks(before, after, path):
        a, b = "".join(before[p0:p1]), "".join(after[q0:q1])
        distance += Indel.distance(a, b)
        total += len(a) + len(b)
        char_cells += len(a) * len(b)
    similarity = 1.0 - distance / total if total else 1.0
    return Comparison(edits, similarity, word_cells, char_cells)


def _banded_alignment(a: list[str], b: list[str]) -> tuple[int, list[tuple[int, int]], int]:
    """Word Levenshtein distance within the band, its path as (index in a, index in b), cells filled."""
    swap = len(a) < len(b)  # rows are the longer side: the diagonal then moves at most one column a row
    rows, cols = (b, a) if swap else (a, b)
    n_rows, n_cols = len(rows), len(cols)
    ids: dict[str, int] = {}
    row_ids = [ids.setdefault(w, len(ids)) for w in rows]
    col_ids = [ids.setdefault(w, len(ids)) for w in cols]
    never = n_rows + n_cols + 1
    lows = [0]
    table = [list(range(min(n_cols, BAND_WORDS) + 1))]
    for i in range(1, n_rows + 1):
        centre = i * n_cols // n_rows
        low, high = max(0, centre - BAND_WORDS), min(n_cols, centre + BAND_WORDS)
        above, above_low = table[-1], lows[-1]
        above_high = above_low + len(above) - 1
        word = row_ids[i - 1]
        row: list[int] = []
        left = never
        for j in range(low, high + 1):  # the hot loop: plain comparisons, no min() calls
            best = left + 1
            k = j - above_low
            if j <= above_high and above[k] < left:
                best = above[k] + 1
            if k and above[k - 1] + (word != col_ids[j - 1]) < best:
                best = above[k - 1] + (word != col_ids[j - 1])
            row.append(best)
            left = best
        lows.append(low)
        table.append(row)
    cells = sum(len(row) for row in table)
    path = _trace(table, lows, row_ids, col_ids)
    if swap:
        path = [(j, i) for i, j in path]
    return table[-1][n_cols - lows[-1]], path, cells


def _trace(table: list[list[int]], lows: list[int], rows: list[int], cols: list[int]
           ) -> list[tuple[int, int]]:
    """The cheapest path back from the last cell to the first, preferring diagonal steps."""

    def cell(i: int, j: int) -> int | None:
        k = j - lows[i]
        return table[i][k] if 0 <= k < len(table[i]) else None

    i, j = len(rows), len(cols)
    path = [(i, j)]
    while i or j:
        here = cell(i, j)
        diagonal = cell(i - 1, j - 1) if i and j else None
        up = cell(i - 1, j) if i else None
        if diagonal is not None and diagonal + (rows[i - 1] != cols[j - 1]) == here:
            i, j = i - 1, j - 1
        elif up is not None and up + 1 == here:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    path.reverse()
    return path


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
