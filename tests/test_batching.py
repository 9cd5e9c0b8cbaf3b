"""Batching changes no text: the same greedy transcripts alone and in batches of 8, on 24 real clips."""

from __future__ import annotations

import pytest
import torch

from asr_server.audio import decode_wav
from asr_server.config import Config
from asr_server.engine import Engine, EngineSettings
from asr_server.protocol import TranscribeOptions
from asr_server.testing import load_manifest


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=1))


def test_batched_text_equals_unbatched(engine: Engine) -> None:
    clips = [c for c in load_manifest() if c.kind == "short"][::2][:24]
    assert len(clips) >= 20
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    alone = [engine.transcribe(samples, options) for samples, options in items]
    batched = []
    for start in range(0, len(items), 8):
        batched += engine.transcribe_batch(items[start:start + 8])
    for clip, one, many in zip(clips, alone, batched, strict=True):
        assert not isinstance(many, Exception), many
        assert many.text == one.text, clip.path.name
        assert many.segments == one.segments and many.language == one.language


def test_mixed_languages_and_detection_in_one_batch(engine: Engine) -> None:
    clips = {c.lang: c for c in load_manifest() if c.kind == "short"}
    items = [(decode_wav(clips[lang].path.read_bytes(), 1e9).samples, TranscribeOptions(given, task))
             for lang, given, task in (("en", "en", "transcribe"), ("de", None, "transcribe"),
                                       ("fr", "fr", "transcribe"), ("es", "es", "transcribe"))]
    results = engine.transcribe_batch(items)
    assert [r.language for r in results if not isinstance(r, Exception)] == ["en", "de", "fr", "es"]
    for (samples, options), result in zip(items, results, strict=True):
        assert not isinstance(result, Exception)
        assert result.text == engine.transcribe(samples, options).text
