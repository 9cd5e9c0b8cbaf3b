"""WAV bytes in, 16 kHz mono float32 out; everything else is ``invalid_audio`` with a reason.

soundfile (libsndfile) parses the container, soxr resamples (HQ), numpy
downmixes by mean. Length is checked from the header before any sample is
decoded, so an over-long file costs no decoding. The samples are decoded,
downmixed and resampled a block at a time (soxr's stream gives the same
samples as its one-shot call), so a 30-minute Float32 48 kHz file costs its
bytes and its 16 kHz result, not its samples three more times. Blocking:
call it off the event loop.
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


BLOCK_FRAMES = 1 << 18  # per block: 5.5 s at 48 kHz; at most 32 MiB at 32 channels


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
            mono, n_frames = _decode_blocks(wav, rate, channels)
    except sf.LibsndfileError as exc:
        raise InvalidAudio(f"not a readable WAV file: {exc.error_string}") from None
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise InvalidAudio(f"not a readable WAV file: {type(exc).__name__}") from None
    if n_frames == 0:
        raise InvalidAudio("the WAV file holds no samples")
    return DecodedAudio(samples=mono, duration_s=n_frames / rate, source_rate=rate, channels=channels)


def _decode_blocks(wav: sf.SoundFile, rate: int, channels: int) -> tuple[np.ndarray, int]:
    """The whole file as 16 kHz mono float32, clipped to full scale, and the source frames read."""
    stream = soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32", quality="HQ") \
        if rate != TARGET_RATE else None
    parts: list[np.ndarray] = []
    n_frames = 0
    while True:
        block = wav.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        last = block.shape[0] < BLOCK_FRAMES
        n_frames += block.shape[0]
        if not np.all(np.isfinite(block)):
            raise InvalidAudio("the WAV file holds NaN or infinite samples")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, once
            mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
        if stream is not None:
            mono = stream.resample_chunk(mono, last=last)
        # Finite float samples near float32's limit overflow the downmix or the resampler.
        if not np.all(np.isfinite(mono)):
            raise InvalidAudio("the WAV file holds float samples too large to downmix or resample")
        # Float WAVs may hold any finite value; a DAC clips at full scale, and so does this.
        parts.append(np.clip(mono, -1.0, 1.0))
        if last:
            break
    samples = np.concatenate(parts) if len(parts) != 1 else parts[0]
    return np.ascontiguousarray(samples, dtype=np.float32), n_frames


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
