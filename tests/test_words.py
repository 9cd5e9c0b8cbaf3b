"""Word timestamps on the 232 s LJSpeech file: inside their segments, in order, spelling the text, on time."""

from __future__ import annotations

import itertools

import torch

from asr_server.audio import decode_wav
from asr_server.config import Config
from asr_server.engine import Engine, EngineSettings
from asr_server.protocol import TranscribeOptions
from tests.harness import load_manifest


def test_words_of_the_ljspeech_file() -> None:
    engine = Engine(EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=1))
    clip = next(c for c in load_manifest() if "ljspeech" in c.path.name)
    samples = decode_wav(clip.path.read_bytes(), 1e9).samples
    result = engine.transcribe(samples, TranscribeOptions("en", "transcribe", word_timestamps=True))
    words = [w for segment in result.segments for w in (segment.words or ())]
    assert len(words) > 400
    for segment in result.segments:
        assert segment.words, segment
        assert all(segment.start <= w.start <= w.end <= segment.end for w in segment.words), segment
        assert "".join(w.word for w in segment.words).split() == segment.text.split()
    assert all(a.start <= b.start and a.end <= b.end for a, b in itertools.pairwise(words))
    assert all(0.0 <= w.probability <= 1.0 for w in words)
    # Each sentence of the manifest: its first word (the first, or one after a full stop) starts
    # within 0.5 s of the sentence's start.
    firsts = [words[0].start] + [b.start for a, b in itertools.pairwise(words)
                                 if a.word.rstrip()[-1:] in ".?!"]
    sentences = [s["start"] for s in clip.row["segments"]]
    assert len(sentences) == 32
    misses = [(t, min(firsts, key=lambda f: abs(f - t))) for t in sentences
              if min(abs(f - t) for f in firsts) > 0.5]
    assert not misses, misses
