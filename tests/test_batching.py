"""Batching changes no text: the same transcripts alone and batched, continuously or by decode call."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from asr_server.audio import decode_wav
from asr_server.config import Config
from asr_server.engine import Engine, EngineSettings, ListedRequest
from asr_server.protocol import TranscribeOptions, Transcription
from tests.harness import EVAL_DIR, ServerProcess, load_manifest

from .conftest import exchange, request


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


def test_decode_calls_batched_give_the_same_text(engine: Engine) -> None:
    """ASR_BATCHING=calls (CUDA's default), tested here so it cannot rot on a CPU-only CI."""
    calls = Engine(EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=1,
                                  batching="calls"))
    assert engine.continuous and not calls.continuous
    clips = [c for c in load_manifest() if c.kind == "short"][1::2][:8]
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    for (samples, options), result in zip(items, calls.transcribe_batch(items), strict=True):
        assert not isinstance(result, Exception), result
        assert result.text == engine.transcribe(samples, options).text


@pytest.mark.parametrize("batching", ["steps", "calls"])
def test_beam_search_batches_too(batching: str) -> None:
    """Default decoding (beam 5) in a batch: each request gets its own result, not an error."""
    beam = Engine(EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=5,
                                 batching=batching))
    clips = [c for c in load_manifest() if c.kind == "short"][1::7][:4]
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    batched = beam.transcribe_batch(items)
    for (samples, options), result in zip(items, batched, strict=True):
        assert not isinstance(result, Exception), result
        assert result.text and result.text == beam.transcribe(samples, options).text


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


class DecoderPasses:
    """Watches an engine's decoder passes (the real ones): which decode calls each carried."""

    def __init__(self, engine: Engine) -> None:
        self.passes: list[list[Any]] = []
        real = engine._decoder_step

        def watched(states: Sequence[Any], tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            self.passes.append(list(states))
            return real(states, tokens)

        engine._decoder_step = watched  # type: ignore[method-assign]

    def joined_mid_decode(self) -> bool:
        """Did a decode call join a pass beside one that had already taken steps?"""
        seen: set[int] = set()
        joined = False
        for states in self.passes:
            ids = {id(state) for state in states}
            joined |= bool(ids & seen) and bool(ids - seen)
            seen |= ids
        return joined


def test_requests_join_a_running_batch_as_places_free(engine: Engine) -> None:
    clips = [c for c in load_manifest() if c.kind == "short"][1::5][:5]
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    alone = [engine.transcribe(samples, options).text for samples, options in items]
    watch = DecoderPasses(engine)
    try:
        requests = [ListedRequest(samples, options) for samples, options in items]
        waiting = list(reversed(requests))
        engine.transcribe_continuously(lambda: waiting.pop() if waiting else None, capacity=2)
    finally:
        del engine._decoder_step
    assert [r.result.text if isinstance(r.result, Transcription) else r.result for r in requests] == alone
    assert max(len(states) for states in watch.passes) == 2
    assert watch.joined_mid_decode()


def test_a_fallback_samples_in_the_same_passes_as_other_requests_search(engine: Engine) -> None:
    """Reversed speech fails whisper's checks and is decoded again by sampling at rising
    temperatures, five sequences at a time, beside the greedy searches of the others."""
    clips = {c.path.name: c for c in load_manifest()}
    speech = [decode_wav(clips[name].path.read_bytes(), 1e9).samples
              for name in ("en_whisper_jfk.wav", "en_fleurs_005.wav", "de_fleurs_002.wav",
                           "en_fasterwhisper_stereo_left.wav")]
    options = [TranscribeOptions("en", "transcribe")] * 3 + [TranscribeOptions("de", "transcribe")]
    items = list(zip([speech[0], speech[3][::-1].copy(), speech[1], speech[2]], options, strict=True))
    normal = [0, 2, 3]
    alone = [engine.transcribe(*items[i]).text for i in normal]
    watch = DecoderPasses(engine)
    try:
        results = engine.transcribe_batch(items)
    finally:
        del engine._decoder_step
    texts = [r.text if isinstance(r, Transcription) else repr(r) for r in results]
    assert [texts[i] for i in normal] == alone and texts[1]
    groups = [{state.group for state in states} for states in watch.passes]
    assert {1, 5} in groups  # a pass carried sampling (5 per audio) and greedy search (1) at once


def test_concurrent_requests_are_batched_by_the_server(server: ServerProcess) -> None:
    def decoder_passes() -> tuple[float, float]:
        """(requests summed over all decoder passes, passes) so far."""
        text = server.http_get("/metrics", server.metrics_port)[1]
        found = dict(re.findall(r"^asr_batch_size_(sum|count) (\S+)$", text, re.M))
        return float(found["sum"]), float(found["count"])

    requests_before, before = decoder_passes()
    jfk = (EVAL_DIR / "en" / "en_whisper_jfk.wav").read_bytes()
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: exchange(server.url, request("en"), jfk).reply, range(6)))
    assert all("what you can do for your country" in r["text"].lower() for r in replies), replies
    requests_after, after = decoder_passes()
    assert after - before >= 20  # one observation per decoder pass: JFK's 11 s take dozens
    assert (requests_after - requests_before) / (after - before) > 3  # most passes carried them all


def test_only_the_worker_thread_runs_torch_on_several_threads() -> None:
    """Participants keep one OpenMP thread each; the model runs on the calling (worker) thread's team.

    More OpenMP threads than CPUs make libgomp stop spinning in every team, the worker's too.
    """
    engine = Engine(EngineSettings(Config().model_path, "cpu", threads=2, beam_size=1))
    model_threads: list[tuple[str, int]] = []
    engine.model.encoder.register_forward_pre_hook(
        lambda module, args: model_threads.append((threading.current_thread().name, torch.get_num_threads())))
    clips = [c for c in load_manifest() if c.kind == "short"][:3]
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    with ThreadPoolExecutor(1, thread_name_prefix="worker") as worker:
        results = worker.submit(engine.transcribe_batch, items).result()
        assert worker.submit(torch.get_num_threads).result() == 2
    assert all(not isinstance(r, Exception) and r.text for r in results)
    assert len(model_threads) == 3 and set(model_threads) == {("worker_0", 2)}
    assert engine._pool is not None
    participants = [engine._pool.submit(torch.get_num_threads) for _ in range(3)]
    assert [f.result() for f in participants] == [1, 1, 1]
