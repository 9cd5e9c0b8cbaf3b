"""The engine in-process: device handling, restricted language detection, sentence segments."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import whisper

from asr_server.contract.domain import SUPPORTED_LANGUAGES, Segment, TranscribeOptions
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.model_loading import resolve_device
from asr_server.engine.transcriber import join_sentences
from asr_server.engine.vad import GateCancelled, SpeechDetector, SpeechRegion
from asr_server.engine.whisper_compat import restricted_language_tokenizer
from tests.harness import REPO, load_manifest

from .conftest import Engines


@pytest.fixture(scope="module")
def model(engines: Engines) -> whisper.model.Whisper:
    return engines.model()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a host without CUDA (tests/test_cuda.py: with one)")
def test_device_resolution_is_explicit_on_a_host_without_cuda() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for asked in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device(asked)


def test_model_is_fp32_on_cpu(model: whisper.model.Whisper) -> None:
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def test_detection_only_chooses_supported_languages(model: whisper.model.Whisper) -> None:
    clips = load_manifest("manifest_synthetic.jsonl", for_wer=False) + load_manifest()[::8]
    for clip in clips:
        samples = decode_wav(clip.path.read_bytes(), 1e9).samples
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples)))
        _, probs = model.detect_language(mel, restricted_language_tokenizer(model))
        assert set(probs) == set(SUPPORTED_LANGUAGES)
        assert max(probs, key=probs.get) in SUPPORTED_LANGUAGES
        if clip.lang != "bg":  # real speech is detected right
            assert max(probs, key=probs.get) == clip.lang, clip.path.name


def test_sentences_are_joined_but_not_across_pauses_or_past_30s() -> None:
    pieces = [Segment("Printing, in the only sense", 0.0, 5.6), Segment("differs from most arts.", 5.6, 9.6),
              Segment("In being", 10.0, 11.0), Segment("comparatively modern?", 11.0, 11.9),
              Segment("a pause", 13.5, 14.0), Segment("follows", 14.0, 15.0),
              Segment("and a very long run", 15.0, 44.0), Segment("of unpunctuated speech", 44.0, 50.0)]
    assert join_sentences(pieces) == [
        Segment("Printing, in the only sense differs from most arts.", 0.0, 9.6),
        Segment("In being comparatively modern?", 10.0, 11.9),
        Segment("a pause follows", 13.5, 15.0),
        Segment("and a very long run", 15.0, 44.0),
        Segment("of unpunctuated speech", 44.0, 50.0),
    ]


def test_engine_gates_on_the_vad(engines: Engines) -> None:
    engine = engines.get(vad=True)
    silent = engine.transcribe(np.zeros(16_000 * 5, dtype=np.float32), TranscribeOptions(None, "transcribe"))
    assert silent.text == "" and silent.segments == () and silent.language == ""


def test_vad_sequence_model_finds_the_streaming_models_regions() -> None:
    """vad.py uses silero's one-call sequence model; its regions must be the streaming model's."""
    from silero_vad import get_speech_timestamps, load_silero_vad

    detector = SpeechDetector()
    streaming = load_silero_vad()
    torch.set_num_threads(2)  # silero_vad's import set it to 1
    options = detector.options
    clips = [c for c in load_manifest() if c.kind == "short"][::3]
    silence = np.zeros(16_000 * 3, dtype=np.float32)
    noise = np.random.default_rng(3).normal(0, 0.2, 16_000 * 3).astype(np.float32)
    audios = [decode_wav(c.path.read_bytes(), 60).samples for c in clips] + [silence, noise]
    speech = 0
    for samples in audios:
        stamps = get_speech_timestamps(
            torch.from_numpy(samples), streaming, threshold=options.threshold, sampling_rate=16_000,
            min_speech_duration_ms=options.min_speech_ms, min_silence_duration_ms=options.min_silence_ms,
            speech_pad_ms=options.pad_ms)
        streaming.reset_states()
        expected = [SpeechRegion(s["start"] / 16_000, s["end"] / 16_000) for s in stamps]
        assert detector.speech_regions(samples) == expected
        speech += bool(expected)
    assert speech == len(clips) >= 15  # every real clip has speech; silence and noise have none


def test_the_vad_stops_between_blocks_once_its_caller_has_gone() -> None:
    """A recording of many 16 s blocks: with the event set the gate stops at the next block; the same
    detector then still answers whole recordings (the cancelled call left its model as it was)."""
    detector = SpeechDetector()
    clip = next(c for c in load_manifest() if "jfk" in c.path.name)
    speech = decode_wav(clip.path.read_bytes(), 60).samples
    long_recording = np.tile(speech, 30)  # 5.5 minutes: about 21 blocks

    class SetAtFifthLook(threading.Event):
        """An event its caller sets while the gate runs: it reads as set from the fifth look on."""

        looks = 0

        def is_set(self) -> bool:
            self.looks += 1
            return self.looks >= 5

    cancelled = SetAtFifthLook()
    with pytest.raises(GateCancelled):
        detector.speech_regions(long_recording, cancelled)
    assert cancelled.looks == 5  # four blocks ran, the fifth was refused: one look per block
    assert detector.speech_regions(speech, threading.Event()) == detector.speech_regions(speech)
    assert detector.speech_regions(speech)  # speech is found: the event is checked, not always raised


def test_warm_up_compiles_whispers_word_alignment_before_the_first_request() -> None:
    """In a fresh interpreter (nothing compiled yet): whisper's DTW has no compiled signature before
    ``warm_up`` and has one after it, so the first request with word timestamps compiles nothing."""
    probe = """
import torch, whisper.timing
from asr_server.config import Config
from asr_server.engine.transcriber import Engine, EngineSettings
engine = Engine(EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=1,
                               vad=False))
before = len(whisper.timing.dtw_cpu.signatures)
engine.warm_up()
print(before, len(whisper.timing.dtw_cpu.signatures))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    assert before == 0 and after >= 1, done.stdout
