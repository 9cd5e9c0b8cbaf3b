"""The HTTP API's audio: each container decodes to the WAV's samples; none decodes past its limit."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from asr_server.contract.errors import AudioTooLong, InvalidAudio
from asr_server.engine.audio_decoding import decode_audio, decode_wav
from tests import harness
from tests.codecs import ENCODINGS, SOUNDFILE_ENCODINGS, encode

FORMATS = [*SOUNDFILE_ENCODINGS, *ENCODINGS]
CLIP = "en/en_picovoice_test.wav"


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, int, np.ndarray]:
    """The clip as read, its rate, and the server's own 16 kHz decode of the WAV."""
    path = harness.EVAL_DIR / CLIP
    samples, rate = sf.read(path, dtype="float32")
    return samples, rate, decode_wav(path.read_bytes(), 60).samples


def aligned_correlation(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Correlation after the codec's delay (AAC primes 1024 samples, Opus a few) is taken out."""
    window = reference[: 2 * 16_000]
    lag = int(np.argmax(np.correlate(decoded[: len(window) + 4096], window, "valid")))
    n = min(len(reference), len(decoded) - lag)
    return float(np.corrcoef(reference[:n], decoded[lag:lag + n])[0, 1])


@pytest.mark.parametrize("name", FORMATS)
def test_each_container_decodes_to_the_wavs_samples(name: str,
                                                    clip: tuple[np.ndarray, int, np.ndarray]) -> None:
    samples, rate, reference = clip
    audio = decode_audio(encode(samples, rate, name), 60)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert abs(audio.duration_s - len(samples) / rate) < 0.15, audio.duration_s
    assert aligned_correlation(reference, audio.samples) > 0.95


def test_wav_through_decode_audio_is_decode_wav(clip: tuple[np.ndarray, int, np.ndarray]) -> None:
    data = (harness.EVAL_DIR / CLIP).read_bytes()
    assert np.array_equal(decode_audio(data, 60).samples, clip[2])


@pytest.mark.parametrize("name", FORMATS)
def test_three_minutes_of_silence_stop_at_the_limit(name: str) -> None:
    """A few kilobytes that expand to three minutes are refused, not decoded to the end."""
    data = encode(np.zeros(180 * 16_000, dtype=np.float32), 16_000, name)
    with pytest.raises(AudioTooLong, match="at most 20 s"):
        decode_audio(data, 20)


def test_a_flac_that_hides_its_length_is_counted_while_it_decodes() -> None:
    data = bytearray(encode(np.zeros(180 * 16_000, dtype=np.float32), 16_000, "flac"))
    # STREAMINFO's total-samples field (the low 36 bits of bytes 18-25) set to 0, "unknown".
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = packed.to_bytes(8, "big")
    assert sf.info(io.BytesIO(bytes(data))).frames != 180 * 16_000  # the header no longer tells
    with pytest.raises(AudioTooLong) as refused:
        decode_audio(bytes(data), 20)
    seconds = float(str(refused.value).split()[2])
    assert 20 < seconds < 40, refused.value  # stopped within a block or two of the limit


@pytest.mark.parametrize("data, detail", [
    (b"#EXTM3U\n#EXT-X-VERSION:3\nhttp://127.0.0.1:1/x.ts\n", "unrecognised audio"),
    (b"\x00" * 64, "unrecognised audio"),
    (b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00", "not a readable mov file"),
    (b"\x1aE\xdf\xa3" + b"\x00" * 60, "not a readable matroska file"),
    (b"OggS" + b"\x00" * 60, "not a readable ogg file"),
    (b"fLaC" + b"\x00" * 60, "not a readable flac file"),
])
def test_junk_is_invalid_audio(data: bytes, detail: str) -> None:
    with pytest.raises(InvalidAudio, match=detail):
        decode_audio(data, 60)


def test_a_video_without_sound_has_no_audio_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height = 32, 32
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(InvalidAudio, match="no audio stream"):
        decode_audio(buf.getvalue(), 60)
