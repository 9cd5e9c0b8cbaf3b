"""The guard on fixed strings: corrections pass; answers, preambles, translations, cuts and padding do not."""

from __future__ import annotations

import pytest

from asr_server.postprocess import judge_correction, strip_fence

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


def test_enough_cases_in_enough_languages() -> None:
    assert len(CORRECTIONS) >= 10
    assert sum(any("\u0400" <= ch <= "\u04ff" for ch in original) for original, _ in CORRECTIONS) >= 3
