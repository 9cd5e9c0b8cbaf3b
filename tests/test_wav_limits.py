"""Any WAV the spec allows (mono, Float32 or Int16, any rate) up to MAX_AUDIO_SECONDS is accepted.

MAX_AUDIO_BYTES follows from the largest such file at 48 kHz: a 20-minute
Float32 48 kHz recording (230 MB) is a frame the default server reads.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

from asr_server.config import Config
from tests.conftest import exchange, request
from tests.harness import EVAL_DIR, ServerProcess, wav_bytes

JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"
MINUTES = 20


def test_the_default_frame_limit_holds_the_longest_float32_48_khz_recording() -> None:
    config = Config()
    longest = config.max_audio_seconds * 48_000 * 4  # mono Float32
    assert config.effective_max_audio_bytes >= longest + 44
    assert config.max_inflight_audio_bytes >= config.effective_max_audio_bytes


def test_a_20_minute_float32_48_khz_wav_is_transcribed(server: ServerProcess) -> None:
    speech, rate = sf.read(JFK, dtype="float32")
    speech = soxr.resample(speech, rate, 48_000)
    samples = np.zeros(MINUTES * 60 * 48_000, dtype=np.float32)
    samples[48_000:48_000 + len(speech)] = speech  # JFK at 1 s, then silence
    wav = wav_bytes(samples, 48_000, subtype="FLOAT")
    assert len(wav) > 48_000 * 2 * MINUTES * 60 + 65_536  # over the old 16-bit-derived limit
    del samples
    result = exchange(server.url, request("en"), wav, timeout_s=600)
    reply = result.reply
    assert "ask not what your country can do for you" in reply["text"].lower(), reply
    assert len(reply["text"].split()) < 40  # the 20 minutes of silence after it add nothing
    assert reply["segments"][-1]["end"] <= 14
    assert result.close_code == 1000
