"""WAV decoding: every accepted format to 16 kHz mono float32, and a clear invalid_audio otherwise."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from asr_server.contract.errors import AudioTooLong, InvalidAudio
from asr_server.engine.audio_decoding import TARGET_RATE, decode_wav
from tests.harness import wav_bytes


def sine(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * TARGET_RATE / len(samples))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("container", ["WAV", "WAVEX"])
def test_every_accepted_encoding(subtype: str, container: str) -> None:
    buf = io.BytesIO()
    sf.write(buf, sine(440, 16_000), 16_000, format=container, subtype=subtype)
    audio = decode_wav(buf.getvalue(), 60)
    assert audio.samples.dtype == np.float32 and audio.samples.shape == (16_000,)
    tolerance = 0.02 if subtype == "PCM_U8" else 1e-3
    assert np.max(np.abs(audio.samples - sine(440, 16_000))) < tolerance


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 192_000])
def test_resampled_to_16k_keeping_pitch_and_length(rate: int) -> None:
    audio = decode_wav(wav_bytes(sine(1000, rate, 2.0), rate), 60)
    assert abs(len(audio.samples) - 2 * TARGET_RATE) <= 1
    assert abs(peak_hz(audio.samples) - 1000) < 2
    assert audio.source_rate == rate and audio.duration_s == pytest.approx(2.0)


def test_multichannel_is_downmixed_by_mean() -> None:
    left, right = sine(300, 16_000), sine(700, 16_000, amplitude=0.25)
    audio = decode_wav(wav_bytes(np.stack([left, right], axis=1), 16_000, "FLOAT"), 60)
    assert np.allclose(audio.samples, (left + right) / 2, atol=1e-6)
    assert audio.channels == 2


def test_32_channels_accepted_33_refused() -> None:
    block = np.tile(sine(440, 16_000, 0.1)[:, None], (1, 32))
    assert decode_wav(wav_bytes(block, 16_000), 60).channels == 32
    wide = np.tile(sine(440, 16_000, 0.1)[:, None], (1, 33))
    with pytest.raises(InvalidAudio, match="33 channels"):
        decode_wav(wav_bytes(wide, 16_000), 60)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "too short"),
    (b"RIFF\x00\x00", "too short"),
    (b"RIFF\x24\x00\x00\x00AVI LIST", "not WAVE"),
    (b"OggS" + bytes(100), "Ogg"),
    (b"fLaC" + bytes(100), "FLAC"),
    (b"ID3\x03" + bytes(100), "MP3"),
    (b"\x1aE\xdf\xa3" + bytes(100), "WebM"),
    (bytes(100), "RIFF/WAVE"),
    (b"RIFF\xff\xff\xff\xffWAVEfmt " + bytes(4), "readable"),
])
def test_not_a_wav(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidAudio, match=reason):
        decode_wav(data, 60)


@pytest.mark.parametrize("subtype", ["ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM", "GSM610"])
def test_other_codecs_in_wav_are_refused(subtype: str) -> None:
    buf = io.BytesIO()
    sf.write(buf, sine(440, 8_000), 8_000, format="WAV", subtype=subtype)
    with pytest.raises(InvalidAudio, match=subtype):
        decode_wav(buf.getvalue(), 60)


def test_zero_samples() -> None:
    with pytest.raises(InvalidAudio, match="no samples"):
        decode_wav(wav_bytes(np.zeros(0, dtype=np.float32), 16_000), 60)


def test_one_sample_is_audio() -> None:
    assert decode_wav(wav_bytes(np.zeros(1, dtype=np.float32), 16_000), 60).samples.size == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(bad: float) -> None:
    samples = sine(440, 16_000)
    samples[100] = bad
    with pytest.raises(InvalidAudio, match="NaN or infinite"):
        decode_wav(wav_bytes(samples, 16_000, "FLOAT"), 60)


@pytest.mark.parametrize("rate", [4_000, 7_999, 192_001, 384_000])
def test_sample_rate_out_of_range(rate: int) -> None:
    with pytest.raises(InvalidAudio, match="sample rate"):
        decode_wav(wav_bytes(sine(100, rate, 0.05), rate), 60)


def test_too_long_is_judged_from_the_header() -> None:
    with pytest.raises(AudioTooLong, match="at most 1 s"):
        decode_wav(wav_bytes(sine(440, 16_000, 1.5), 16_000), 1)


def test_truncated_data_decodes_what_is_there() -> None:
    data = wav_bytes(sine(440, 16_000), 16_000)
    audio = decode_wav(data[: 44 + 16_000], 60)  # half the samples; the header still says all
    assert len(audio.samples) == 8_000


def test_header_size_fields_that_lie() -> None:
    data = bytearray(wav_bytes(sine(440, 16_000), 16_000))
    data[4:8] = struct.pack("<I", 7)  # RIFF size far too small
    data[40:44] = struct.pack("<I", 0xFFFFFFF0)  # data size far too large
    assert len(decode_wav(bytes(data), 60).samples) == 16_000
