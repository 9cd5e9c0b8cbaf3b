"""The reply judge: corrections pass; answers, preambles, translations, cuts and padding do not.

Fixed strings first, then long transcripts (made here from the fixed strings'
words, seeded) for what only length shows: the drift allows a reply that is
uniformly shorter, a run cut or added in one place is refused, and the
character comparisons' work (cells counted, not time) grows in step with the
words. The word alignment is RapidFuzz's; the edits counted from its path are
checked against a plain dynamic programme written here.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_server.postprocess.reply_judge import (
    CHUNK_WORDS,
    MAX_DRIFT_WORDS,
    compare,
    judge_correction,
    normalise_words,
    strip_fence,
)
from tests.harness import word_levenshtein

CORRECTIONS = [
    ("здравейте как сте", "Здравейте, как сте?"),
    ("аз ви казах всичко щото лежеше на сърцето ми", "Аз ви казах всичко, щото лежеше на сърцето ми."),
    ("утре ще има среща в осем часа в офиса", "Утре ще има среща в осем часа в офиса."),
    ("and so my fellow americans ask not what your country can do for you",
     "And so, my fellow Americans, ask not what your country can do for you."),
    ("the meeting is at ten thirty tomorrow in the bored room",
     "The meeting is at ten thirty tomorrow in the board room."),
    ("i scream you scream we all scream for ice cream", "I scream, you scream, we all scream for ice cream."),
    ("wir treffen uns morgen um zehn uhr im büro", "Wir treffen uns morgen um zehn Uhr im Büro."),
    ("je pense donc je suis", "Je pense, donc je suis."),
    ("el tren sale de la estación a las ocho", "El tren sale de la estación a las ocho."),
    ("można prosić o rachunek", "Można prosić o rachunek?"),
    ("привет как дела", "Привет, как дела?"),
    ("Хорошо.", "Хорошо."),  # unchanged is a correction too
    ("the patient has a history of hyper tension", "The patient has a history of hypertension."),
    ("hello world", "<transcript>\nHello, world!\n</transcript>"),  # echoed fences are tolerated
]

REJECTIONS = [
    # answers the text instead of correcting it
    ("what is the capital of france", "The capital of France is Paris.", "not a correction"),
    ("can you tell me a joke", "Sure! Why did the chicken cross the road? To get to the other side.",
     "preamble"),
    ("колко е часът", "Не знам колко е часът, но мога да ви помогна с друго.", "longer"),
    # chatty preambles and notes
    ("hello everyone and welcome", "Here is the corrected text: Hello everyone, and welcome.", "preamble"),
    ("hello everyone and welcome", "Corrected transcript:\nHello everyone, and welcome.", "preamble"),
    ("здравейте на всички", "Ето коригирания текст: Здравейте на всички.", "preamble"),
    ("hello everyone and welcome to the show",
     "Hello everyone, and welcome to the show.\nNote: I added commas.", "adds lines"),
    # added quotes
    ("hello everyone and welcome", '"Hello everyone, and welcome."', "quotes"),
    # translations and drift
    ("wir treffen uns morgen um zehn uhr im büro", "We are meeting tomorrow at ten in the office.",
     "not a correction"),
    ("здравейте как сте днес", "Hello, how are you today?", "another script"),
    ("je pense donc je suis", "I think, therefore I am.", "not a correction"),
    # truncation and padding
    ("the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat",
     "The quick brown fox jumps.", "shorter"),
    ("the quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy dog and then it "
     "runs far away into the dark forest.", "longer"),
    # empty
    ("hello", "   ", "empty"),
    # real SmolLM2-135M "corrections" that drop or swap words: worse than the raw text
    ("Une partie fue, feu dirigée vers le port de l'Ardoise.", "Une partie fue, le port de l'Ardoise.",
     "not a correction"),
    ("Su álgase dio con el cambio de sitio.", "La álgase debe conocer el cambio de sitio.",
     "not a correction"),
]


@pytest.mark.parametrize(("original", "reply"), CORRECTIONS)
def test_corrections_are_accepted(original: str, reply: str) -> None:
    assert judge_correction(original, reply) is None


@pytest.mark.parametrize(("original", "reply", "reason"), REJECTIONS)
def test_non_corrections_are_rejected(original: str, reply: str, reason: str) -> None:
    verdict = judge_correction(original, reply)
    assert verdict is not None and reason in verdict, verdict


def test_a_made_up_next_transcript_is_cut_off() -> None:
    reply = "He began a confused complaint.\n<transcript>\nThe wizard was a demon.\n</transcript>"
    assert judge_correction("he began a confused complaint", reply) is None
    assert strip_fence(reply) == "He began a confused complaint."


LATIN_WORDS = sorted({word for original, _ in CORRECTIONS for word in normalise_words(original)
                      if all(ch < "\u0250" for ch in word)})


def long_transcript(n_words: int, seed: int = 7) -> list[list[str]]:
    """Sentences of 8 to 15 words drawn from the Latin-script corrections above: not periodic."""
    rng = random.Random(seed)
    sentences: list[list[str]] = []
    while sum(map(len, sentences)) < n_words:
        sentences.append([rng.choice(LATIN_WORDS) for _ in range(rng.randint(8, 15))])
    return sentences


def corrected(sentence: list[str]) -> str:
    """A correction's edits: a capital, a comma, a full stop and one word respelt (a doubled letter)."""
    words = list(sentence)
    words[0] = words[0].capitalize()
    words[2] += ","
    words[-2] = words[-2][0] + words[-2]
    return " ".join(words) + "."


def raw(sentences: list[list[str]]) -> str:
    return " ".join(" ".join(sentence) for sentence in sentences)


def test_a_long_correction_is_accepted_even_when_uniformly_shorter() -> None:
    sentences = long_transcript(3000)
    assert judge_correction(raw(sentences), " ".join(map(corrected, sentences))) is None
    # One word dropped every ten sentences: 30 words in all, spread out; the drift follows the proportion.
    thinned = [sentence[1:] if i % 10 == 0 else sentence for i, sentence in enumerate(sentences)]
    assert judge_correction(raw(sentences), " ".join(map(corrected, thinned))) is None


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_long_reply_that_cuts_or_adds_a_run_in_one_place_is_rejected(where: float) -> None:
    sentences = long_transcript(3000)
    reply = " ".join(map(corrected, sentences)).split()
    at = int(len(reply) * where)
    run = 5 * MAX_DRIFT_WORDS  # far less than the 20% of words a correction may change in all
    cut = " ".join(reply[:at] + reply[at + run:])
    padded = " ".join(reply[:at] + [w for s in long_transcript(run, seed=8) for w in s][:run] + reply[at:])
    for reply_text in (cut, padded):
        verdict = judge_correction(raw(sentences), reply_text)
        assert verdict is not None and "not a correction" in verdict, verdict


words = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=60)


@settings(max_examples=300, deadline=None)
@given(words, st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 80),
                                 st.sampled_from(["a", "b", "x", "y"])), max_size=24))
def test_the_edits_are_the_true_distance_and_the_path_spans_both_texts(
        before: list[str], edits: list[tuple[str, int, str]]) -> None:
    after = list(before)
    for op, position, word in edits:
        at = position % (len(after) + 1)
        if op == "insert":
            after.insert(at, word)
        elif after and at < len(after):
            after[at:at + 1] = [word] if op == "replace" else []
    measured = compare(before, after)
    assert measured.word_edits == word_levenshtein(before, after)  # the textbook way: independent
    if min(len(before), len(after)) <= MAX_DRIFT_WORDS:
        assert measured.drift_words == 0.0


def test_the_drift_is_a_run_in_one_place_not_words_spread_out() -> None:
    before = normalise_words(raw(long_transcript(1000)))
    middle = len(before) // 2
    run = 3 * MAX_DRIFT_WORDS
    cut = compare(before, before[:middle] + before[middle + run:])
    spread = compare(before, [w for i, w in enumerate(before) if i % (len(before) // run) != 7])
    assert cut.word_edits == run and spread.word_edits >= run
    assert cut.drift_words > MAX_DRIFT_WORDS  # half the run, against the proportional diagonal
    assert spread.drift_words < 2


@pytest.mark.parametrize("kind", ["correction", "unrelated"])
def test_the_character_comparisons_do_work_linear_in_the_words(kind: str) -> None:
    per_word = []
    for n in (250, 1000, 4000, 16000):
        sentences = long_transcript(n)
        before = normalise_words(raw(sentences))
        other = long_transcript(n, seed=9) if kind == "unrelated" else sentences
        after = normalise_words(" ".join(map(corrected, other)))
        work = compare(before, after)
        # What the code may do at most: chunks of at most 2 * CHUNK_WORDS words.
        longest_word = max(map(len, before + after))
        assert work.char_cells <= 2 * CHUNK_WORDS * longest_word * len("".join(before))
        per_word.append(work.char_cells / len(before))
    # 64 times the words: quadratic work would be 64 times as much per word; this stays flat.
    assert max(per_word) <= 1.25 * min(per_word), per_word
