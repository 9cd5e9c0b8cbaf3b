"""The decoding loop against its oracle, whisper's own transcribe(), on real clips and the real model.

Greedy results must be whisper's exactly (text, segments, language), each
clip alone and in batches of 8, in both attention forms; beam search too on
a few; the fallback and no-speech decisions are whisper's. The out-of-memory
policy is tested with a named fault double; the threads test counts the
threads that run the model.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
import whisper

from asr_server.contract.domain import Segment, TranscribeOptions, Transcription
from asr_server.engine import forward, kv_cache
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.decoding_loop import DecodingLoop
from asr_server.engine.job import Speech
from asr_server.engine.pass_plan import Plan
from asr_server.engine.transcribe_state import (
    COMPRESSION_RATIO_THRESHOLD,
    FIT_SILENCE_FRAMES,
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    RequestWindows,
)
from asr_server.engine.transcribe_state import (
    WINDOW_FRAMES as N_FRAMES,
)
from asr_server.engine.transcriber import Engine, ListedRequest, join_sentences
from asr_server.engine.vad import SpeechDetector, SpeechRegion
from asr_server.engine.word_timing import mel_of
from tests.harness import EVAL_DIR, Clip, ServerProcess, load_manifest, reference_result, wer
from tests.test_accuracy import SUBSET as ACCURACY_SUBSET

from .conftest import Engines, exchange, request


@pytest.fixture(scope="module")
def engine(engines: Engines) -> Engine:
    return engines.get()  # float32, no VAD: whisper's own output is the oracle


def samples_of(clip: Clip) -> np.ndarray:
    return decode_wav(clip.path.read_bytes(), 1e9).samples


def whisper_raw(model: whisper.model.Whisper, samples: np.ndarray, options: TranscribeOptions,
                beam_size: int | None = None, key: Any = None) -> dict[str, Any]:
    """The oracle: whisper's transcribe() with the server's decoding settings (tests/harness.py)."""
    return reference_result(model, samples, options.language, beam_size or 1, options.task, options.prompt,
                            key)


def whisper_transcribe(model: whisper.model.Whisper, samples: np.ndarray, options: TranscribeOptions,
                       beam_size: int | None = None, key: Any = None) -> Transcription:
    """The oracle's result, formatted as ours."""
    return formatted(whisper_raw(model, samples, options, beam_size, key), samples)


def formatted(result: dict[str, Any], samples: np.ndarray) -> Transcription:
    duration = len(samples) / 16_000
    segments = [Segment(seg["text"].strip(), round(seg["start"], 3),
                        round(max(seg["start"], min(seg["end"], duration)), 3))
                for seg in result["segments"] if seg["text"].strip()]
    joined = join_sentences(segments)
    return Transcription(" ".join(s.text for s in joined), tuple(joined), result["language"])


def oracle_items() -> tuple[list[Clip], list[tuple[np.ndarray, TranscribeOptions]]]:
    """24 short clips in four languages: test_accuracy's 12, whose references are then shared, and 12
    more, every other one of them (not Bulgarian) with its language detected."""
    subset = {name for names in ACCURACY_SUBSET.values() for name in names}
    short = [c for c in load_manifest() if c.kind == "short"]
    more = [c for c in short[::2] if c.path.name not in subset][:12]
    clips = [c for c in short if c.path.name in subset] + more
    options = [TranscribeOptions(None if i >= 12 and i % 2 and c.lang != "bg" else c.lang, "transcribe")
               for i, c in enumerate(clips)]
    return clips, [(samples_of(c), o) for c, o in zip(clips, options, strict=True)]


@pytest.fixture(scope="module")
def oracle(engine: Engine) -> Iterator[tuple[list[Clip], list[tuple[np.ndarray, TranscribeOptions]],
                                             list[Transcription]]]:
    clips, items = oracle_items()
    assert len(clips) == 24 and len({c.lang for c in clips}) >= 3
    yield clips, items, [whisper_transcribe(engine.model, *item, key=clip.path)
                         for clip, item in zip(clips, items, strict=True)]


def test_greedy_is_whisper_transcribe_alone_and_in_batches_of_8(engine: Engine, oracle: Any) -> None:
    clips, items, expected = oracle
    alone = engine.transcribe_batch(items, capacity=1)
    batched = engine.transcribe_batch(items, capacity=8)
    for clip, theirs, one, many in zip(clips, expected, alone, batched, strict=True):
        assert one == theirs, clip.path.name
        assert many == theirs, clip.path.name


def test_batched_attention_gives_the_same_results(engines: Engines, oracle: Any) -> None:
    """CUDA's attention form, forced on the CPU so that it cannot rot on a CPU-only CI."""
    clips, items, expected = oracle
    batched = engines.get(batched_attention=True)
    assert batched.loop.caches.batched
    for clip, theirs, ours in zip(clips[:8], expected[:8], batched.transcribe_batch(items[:8]), strict=True):
        assert ours == theirs, clip.path.name


@pytest.mark.parametrize("batched_attention", [False, True])
def test_beam_search_is_whisper_transcribe_in_a_batch(engines: Engines, batched_attention: bool) -> None:
    beam = engines.get(beam_size=5, batched_attention=batched_attention)
    clips = [c for c in load_manifest() if c.kind == "short"][1::7][:4]
    items = [(samples_of(c), TranscribeOptions(c.lang, "transcribe")) for c in clips]
    for clip, item, ours in zip(clips, items, beam.transcribe_batch(items), strict=True):
        assert ours == whisper_transcribe(beam.model, *item, beam_size=5, key=clip.path), clip.path.name


def fitted_oracle(model: whisper.model.Whisper, samples: np.ndarray, language: str) -> str:
    """whisper's own encoder and decode on a fitted window: the audio, then ``FIT_SILENCE_FRAMES`` of
    padding to a whole second; the encoder's positional embedding cut to it (whisper.cpp's audio_ctx)."""
    mel = mel_of(torch.from_numpy(samples), model.dims.n_mels)
    content = mel.shape[-1] - N_FRAMES
    frames = -(-(content + FIT_SILENCE_FRAMES) // 100) * 100
    assert frames < N_FRAMES, "a clip long enough to fill 30 s tells nothing here"
    encoder = model.encoder
    whole = encoder.positional_embedding
    encoder.positional_embedding = whole[: frames // 2]
    try:
        result = whisper.decode(model, whisper.pad_or_trim(mel[:, :content], frames),
                                whisper.DecodingOptions(language=language, fp16=False))
    finally:
        encoder.positional_embedding = whole
    return result.text  # type: ignore[no-any-return, union-attr]


@pytest.mark.parametrize("batched_attention", [None, True])
def test_a_fitted_window_is_whisper_decoding_its_frames_in_a_batch_with_whole_windows(
        engines: Engines, batched_attention: bool | None) -> None:
    """A live decode's window (``fit_window``) is whisper's decode of those frames, its padding masked
    in batched attention; the 30 s windows decoded beside it are whisper's transcribe() still."""
    engine = engines.get(batched_attention=batched_attention)
    clips = [c for c in load_manifest() if c.kind == "short" and c.lang != "bg"][::4][:6]
    fitted = [(samples_of(c), TranscribeOptions(c.lang, "transcribe", fallback=False, fit_window=True))
              for c in clips[:3]]
    whole = [(samples_of(c), TranscribeOptions(c.lang, "transcribe")) for c in clips[3:]]
    results = engine.transcribe_batch(fitted + whole)
    for clip, (samples, options), ours in zip(clips[:3], fitted, results[:3], strict=True):
        assert isinstance(ours, Transcription) and ours.text, clip.path.name
        assert options.language is not None
        assert ours.text.split() == fitted_oracle(engine.model, samples, options.language).split()
    for clip, item, theirs in zip(clips[3:], whole, results[3:], strict=True):
        assert theirs == whisper_transcribe(engine.model, *item, key=clip.path), clip.path.name


def test_a_window_is_fitted_only_without_word_timestamps() -> None:
    """whisper's word alignment runs on 30 s: a request for words keeps the whole window."""
    mel = torch.zeros(80, 450 + N_FRAMES)
    shapes = {}
    for words in (False, True):
        options = TranscribeOptions("en", "transcribe", word_timestamps=words, fit_window=True)
        window = RequestWindows(mel, options, None, 448).next_window()
        assert window is not None
        shapes[words] = window.shape[-1]
    fitted = -(-(450 + FIT_SILENCE_FRAMES) // 100) * 100  # 4.5 s of audio and the padding, whole seconds
    assert shapes == {False: fitted, True: N_FRAMES} and fitted < N_FRAMES


def test_a_prompt_is_whisper_initial_prompt(engine: Engine) -> None:
    clips = {c.path.name: c for c in load_manifest()}
    options = TranscribeOptions("en", "transcribe", prompt="Ask not. President Kennedy, Americans.")
    samples = samples_of(clips["en_whisper_jfk.wav"])
    assert engine.transcribe(samples, options) == whisper_transcribe(engine.model, samples, options)


def test_a_prefix_of_what_it_would_say_changes_nothing(engine: Engine) -> None:
    """A live decode's committed words, forced as the window's first tokens and read in one pass,
    lead to the very tokens the search would have chosen itself: same text, same segments."""
    clips = {c.path.name: c for c in load_manifest()}
    samples = samples_of(clips["en_whisper_jfk.wav"])
    options = TranscribeOptions("en", "transcribe", prompt="President Kennedy.", fit_window=True)
    free = engine.transcribe(samples, options)
    first = free.segments[0].text.split()
    assert free.segments[0].start == 0.0 and len(first) >= 4
    forced = engine.transcribe(samples, replace(options, prefix=" ".join(first[:len(first) // 2])))
    assert forced == free


def test_a_prefix_is_the_texts_start_and_the_rest_is_decoded_after_it(engine: Engine) -> None:
    """Forced words the audio does not say stay, as given; the decode goes on with what follows them."""
    clips = {c.path.name: c for c in load_manifest()}
    clip = clips["en_whisper_jfk.wav"]
    options = TranscribeOptions("en", "transcribe", prefix="And so, my fellow citizens,")
    result = engine.transcribe(samples_of(clip), options)
    assert result.text.startswith("And so, my fellow citizens,"), result.text
    rest = result.text.removeprefix("And so, my fellow citizens,")
    assert wer([clip.text.split("Americans,")[1]], [rest], "en") <= 10, rest
    assert result.segments[0].start == 0.0


def test_a_decodes_tokens_can_be_bounded(engine: Engine) -> None:
    """``sample_len`` (whisper's): the window's decode stops after that many tokens, with the words
    it had, as a live decode that loops stops."""
    clips = {c.path.name: c for c in load_manifest()}
    samples = samples_of(clips["en_whisper_jfk.wav"])
    free = engine.transcribe(samples, TranscribeOptions("en", "transcribe"))
    bounded = engine.transcribe(samples, TranscribeOptions("en", "transcribe", sample_len=6))
    assert 0 < len(bounded.text.split()) <= 5 and free.text.startswith(bounded.text), bounded.text


class Listed:
    def __init__(self, waiting: list[ListedRequest]) -> None:
        self.waiting = waiting

    def next(self, block: bool) -> ListedRequest | None:
        return self.waiting.pop(0) if self.waiting else None


def windows_of(engine: Engine, items: list[tuple[np.ndarray, TranscribeOptions]],
               speech: dict[int, list[SpeechRegion]] | None = None) -> list[RequestWindows]:
    """The loop's own record of each request (its windows' decisions), not the engine's answer;
    ``speech``: the VAD's regions for some of them, as the scheduler hands them over."""
    loop = DecodingLoop(engine.model, len(items), None, torch.float32, False, engine._prepare,
                        lambda work, windows: windows)
    requests = [ListedRequest(samples, options) for samples, options in items]
    for index, regions in (speech or {}).items():
        requests[index].speech = Speech(checked=True, regions=regions)  # as the scheduler hands it over
    loop.serve(Listed(list(requests)), len(requests), lambda size: None)
    assert all(isinstance(r.result, RequestWindows) for r in requests), [r.result for r in requests]
    return [r.result for r in requests]  # type: ignore[misc]


def test_fallback_and_no_speech_are_decided_as_whisper_decides(engine: Engine) -> None:
    """Reversed speech fails whisper's checks at temperature 0 and is sampled again, beside others'
    greedy searches; windows of silence between two speeches are skipped, as transcribe() skips them."""
    clips = {c.path.name: c for c in load_manifest()}
    jfk = samples_of(clips["en_whisper_jfk.wav"])
    reversed_speech = samples_of(clips["en_pocketsphinx_goforward.wav"])[::-1].copy()  # falls back to 1.0
    silence_between = np.concatenate([jfk, np.zeros(16_000 * 50, dtype=np.float32), jfk])
    en = TranscribeOptions("en", "transcribe")
    items = [(jfk, en), (reversed_speech, en), (silence_between, en)]
    recorded = windows_of(engine, items, {2: SpeechDetector().speech_regions(silence_between)})

    # whisper's own first decode of it, at temperature 0, fails its own checks: transcribe() would
    # sample it again, as the loop did. (Its whole cascade of samplings, the oracle's way elsewhere,
    # takes 48 s here against the loop's 7 s; the decision is the point.)
    assert recorded[1].decisions[0][1] > 0
    mel = mel_of(torch.from_numpy(reversed_speech), engine.model.dims.n_mels)
    content = mel[:, : min(N_FRAMES, mel.shape[-1] - N_FRAMES)]  # as transcribe() cuts its first window
    first = whisper.decode(engine.model, whisper.pad_or_trim(content, N_FRAMES),
                           whisper.DecodingOptions(language="en", temperature=0.0, fp16=False))
    assert (first.compression_ratio > COMPRESSION_RATIO_THRESHOLD or first.avg_logprob < LOGPROB_THRESHOLD)
    assert not (first.no_speech_prob > NO_SPEECH_THRESHOLD and first.avg_logprob < LOGPROB_THRESHOLD)
    assert recorded[0].decisions == [(0, 0.0, False)]

    # The window from 30 s to 60 s, nothing but silence between 11 s and 61 s: the VAD hears
    # nothing in it, and it is passed over without running the model.
    judged = [seek for seek, _, silent in recorded[2].decisions if silent]
    assert judged == [] and recorded[2].unheard == [3000], (judged, recorded[2].unheard)
    theirs = whisper_raw(engine.model, silence_between, en)
    whispers_windows = {segment["seek"] for segment in theirs["segments"]}  # those that gave segments
    assert 3000 not in whispers_windows  # whisper decoded it, and judged it silent
    ours = engine._finish(ListedRequest(silence_between, en), recorded[2])
    assert ours == formatted(theirs, silence_between)


def test_a_requests_sampled_fallback_is_the_same_whatever_samples_beside_it(engine: Engine) -> None:
    """Reversed speech is sampled at every fallback temperature. Its text is the same alone and beside
    another request that samples too, whatever torch's global generator holds: each request draws
    from its own generator, seeded alike."""
    clips = {c.path.name: c for c in load_manifest()}
    reversed_speech = samples_of(clips["en_pocketsphinx_goforward.wav"])[::-1].copy()
    other = np.concatenate([np.zeros(8_000, dtype=np.float32), reversed_speech[: 16_000 * 3]])
    en = TranscribeOptions("en", "transcribe")
    torch.manual_seed(1)
    alone = windows_of(engine, [(reversed_speech, en)])[0]
    torch.manual_seed(2)
    beside = windows_of(engine, [(other, en), (reversed_speech, en)])
    assert alone.decisions[0][1] > 0 and beside[0].decisions[0][1] > 0  # both were sampled
    assert [s["tokens"] for s in beside[1].segments] == [s["tokens"] for s in alone.segments]
    assert alone.decisions == beside[1].decisions


class OutOfMemoryInjector:
    """Fault double: a decoder pass over more than one window, or over a window whose cache holds more
    than ``too_long`` tokens, fails as CUDA does when it runs out of memory."""

    def __init__(self, too_long: int) -> None:
        self.too_long = too_long
        self.real = forward.step
        self.passes: list[int] = []

    def __call__(self, caches: kv_cache.Caches, plan: Plan) -> torch.Tensor:
        if len(plan.entries) > 1 or any(length > self.too_long for length in plan.lengths):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")
        self.passes.append(len(plan.entries))
        return self.real(caches, plan)


def test_out_of_memory_runs_the_pass_in_halves_and_fails_only_the_window_too_big(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    clips = [c for c in load_manifest() if c.kind == "short" and c.lang == "en" and c.duration < 12][:3]
    items = [(samples_of(c), TranscribeOptions("en", "transcribe")) for c in clips]
    alone = [engine.transcribe(*item) for item in items]
    long_prompt = TranscribeOptions("en", "transcribe", prompt=" ".join(["Kennedy"] * 150))
    injector = OutOfMemoryInjector(too_long=140)  # the prompt alone is over 150 tokens
    monkeypatch.setattr(forward, "step", injector)
    results = engine.transcribe_batch([*items, (items[0][0], long_prompt)])
    assert results[:3] == alone
    assert isinstance(results[3], torch.OutOfMemoryError)
    assert injector.passes and set(injector.passes) == {1}  # every pass of several ran in halves, to one
    monkeypatch.undo()
    assert engine.transcribe(*items[0]) == alone[0]  # and the loop goes on serving


def test_only_the_worker_thread_runs_the_model_while_16_requests_run(engine: Engine) -> None:
    clips = [c for c in load_manifest() if c.kind == "short"][:16]
    items = [(samples_of(c), TranscribeOptions(c.lang, "transcribe")) for c in clips]
    threads_running_torch: set[str] = set()
    threads_before = {t.ident for t in threading.enumerate()}
    threads_during: set[int | None] = set()

    def record(module: torch.nn.Module, args: Any) -> None:
        threads_running_torch.add(threading.current_thread().name)
        threads_during.update(t.ident for t in threading.enumerate())

    results: list[Transcription | Exception] = []
    worker = threading.Thread(target=lambda: results.extend(engine.transcribe_batch(items, capacity=16)),
                              name="asr-worker")
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        worker.start()
        worker.join(600)
    finally:
        hook.remove()
    assert len(results) == 16 and all(isinstance(r, Transcription) and r.text for r in results)
    assert threads_running_torch == {"asr-worker"}
    assert threads_during - threads_before == {worker.ident}  # the loop starts no thread of its own


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
