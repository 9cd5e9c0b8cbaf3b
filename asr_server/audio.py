"""WAV bytes in, 16 kHz mono float32 out; everything else is ``invalid_audio`` with a reason.

soundfile (libsndfile) parses the container, soxr resamples (HQ), numpy
downmixes by mean. Length is checked from the header before any sample is
decoded, so an over-long file costs no decoding. Blocking: call it off the
event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from asr_server.errors import AudioTooLong, InvalidAudio

TARGET_RATE = 16_000
MIN_RATE = 8_000
MAX_RATE = 192_000
MAX_CHANNELS = 32

_WAV_FORMATS = {"WAV", "WAVEX", "RF64"}
_SUBTYPES = {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
# Magic numbers of containers clients send by mistake, for a helpful detail.
_OTHER_CONTAINERS = (
    (b"OggS", "Ogg"), (b"fLaC", "FLAC"), (b"ID3", "MP3"), (b"\xff\xfb", "MP3"),
    (b"\xff\xf3", "MP3"), (b"\xff\xf2", "MP3"), (b"\x1aE\xdf\xa3", "WebM/Matroska"),
    (b"FORM", "AIFF"), (b".snd", "AU"), (b"caff", "CAF"),
)


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, TARGET_RATE
    duration_s: float  # of the audio as sent
    source_rate: int
    channels: int


def decode_wav(data: bytes, max_seconds: float) -> DecodedAudio:
    """Decode a RIFF/WAVE file to 16 kHz mono float32, or raise ``InvalidAudio``/``AudioTooLong``."""
    _check_container(data)
    try:
        with sf.SoundFile(io.BytesIO(data)) as wav:
            _check_format(wav)
            rate, channels, frames = wav.samplerate, wav.channels, wav.frames
            duration = frames / rate
            if duration > max_seconds:
                raise AudioTooLong(
                    f"audio is {duration:.1f} s long; this server accepts at most {max_seconds:g} s"
                )
            samples = wav.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise InvalidAudio(f"not a readable WAV file: {exc.error_string}") from None
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise InvalidAudio(f"not a readable WAV file: {type(exc).__name__}") from None
    if samples.shape[0] == 0:
        raise InvalidAudio("the WAV file holds no samples")
    if not np.all(np.isfinite(samples)):
        raise InvalidAudio("the WAV file holds NaN or infinite samples")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, once
        mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]
    if rate != TARGET_RATE:
        mono = soxr.resample(mono, rate, TARGET_RATE, quality="HQ")
    # Finite float samples near float32's limit overflow the downmix or the resampler.
    if not np.all(np.isfinite(mono)):
        raise InvalidAudio("the WAV file holds float samples too large to downmix or resample")
    # Float WAVs may hold any finite value; a DAC clips at full scale, and so does this.
    mono = np.clip(mono, -1.0, 1.0)
    return DecodedAudio(
        samples=np.ascontiguousarray(mono, dtype=np.float32),
        duration_s=samples.shape[0] / rate,
        source_rate=rate,
        channels=channels,
    )


def _check_container(data: bytes) -> None:
    if len(data) < 12:
        raise InvalidAudio(f"the audio frame is {len(data)} bytes, too short for a WAV header")
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return
    for magic, name in _OTHER_CONTAINERS:
        if data.startswith(magic):
            raise InvalidAudio(f"got {name} audio; send a WAV (RIFF/WAVE) file")
    if data[:4] == b"RIFF":
        raise InvalidAudio(f"a RIFF file of type {data[8:12]!r}, not WAVE")
    raise InvalidAudio("not a WAV file: it does not start with a RIFF/WAVE header")


def _check_format(wav: sf.SoundFile) -> None:
    if wav.format not in _WAV_FORMATS:
        raise InvalidAudio(f"container {wav.format} is not WAV")
    if wav.subtype not in _SUBTYPES:
        raise InvalidAudio(
            f"encoding {wav.subtype} is not supported; use PCM 8/16/24/32-bit or float 32/64-bit"
        )
    if not MIN_RATE <= wav.samplerate <= MAX_RATE:
        raise InvalidAudio(
            f"sample rate {wav.samplerate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz"
        )
    if not 1 <= wav.channels <= MAX_CHANNELS:
        raise InvalidAudio(f"{wav.channels} channels; at most {MAX_CHANNELS} are accepted")
