"""Word timestamps are whisper's own (its timing module); their checks on the 232 s LJSpeech file
through the server are in test_speech.py's long test."""

from __future__ import annotations

import pytest
import torch
import whisper

from asr_server.contract.domain import TranscribeOptions
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.transcribe_state import BEST_OF, TEMPERATURES
from asr_server.engine.transcriber import Engine
from tests.harness import load_manifest

from .conftest import Engines


@pytest.fixture(scope="module")
def engine(engines: Engines) -> Engine:
    return engines.get(vad=True)  # compared with whisper's own words, in float32


def test_words_are_whisper_own(engine: Engine) -> None:
    """The first 30 s of the file: every word and its times, as transcribe() gives them."""
    clip = next(c for c in load_manifest() if "ljspeech" in c.path.name)
    samples = decode_wav(clip.path.read_bytes(), 1e9).samples[: 16_000 * 30]
    ours = engine.transcribe(samples, TranscribeOptions("en", "transcribe", word_timestamps=True))
    with torch.inference_mode():
        theirs = whisper.transcribe(engine.model, torch.from_numpy(samples), language="en", fp16=False,
                                    temperature=TEMPERATURES, best_of=BEST_OF, word_timestamps=True)
    expected = [(w["word"], round(w["start"], 2), round(w["end"], 2))
                for s in theirs["segments"] for w in s["words"]]
    found = [(w.word, round(w.start, 2), round(w.end, 2)) for s in ours.segments for w in (s.words or ())]
    assert found == expected
