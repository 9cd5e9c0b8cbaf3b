"""Audio bytes in, 16 kHz mono float32 out; anything unreadable is ``invalid_audio`` with a reason.

``decode_wav`` is the WebSocket contract's: RIFF/WAVE only, read by soundfile
(libsndfile). ``decode_audio`` is the HTTP API's: WAV as above, and FLAC, Ogg
(Vorbis, Opus), MP3, m4a/mp4 and WebM/Matroska through PyAV (FFmpeg's
decoders in its wheel: one decoder for every compressed format, and the most
fuzzed one; libsndfile's Vorbis writer crashed on ten minutes of silence
here). The container is chosen from the file's magic bytes and FFmpeg's
demuxer is forced to it, so FFmpeg never probes its way into a playlist or
another format that opens further files or URLs.

soxr resamples (HQ), numpy downmixes by mean. A WAV's length is checked
from its header before any sample is decoded; every format's length is also
counted while it decodes, and decoding stops at ``max_seconds`` (a
decompression bomb that declares one length and holds another costs at most
that). The samples are decoded, downmixed and resampled a block at a time
(soxr's stream gives the same samples as its one-shot call), so a 30-minute
48 kHz file costs its bytes and its 16 kHz result. Blocking: call it off the
event loop.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr

from asr_server.contract.errors import AudioTooLong, InvalidAudio

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


# What a decoder library raises on a malformed file, besides its own error class.
_DECODER_FAILURES = (RuntimeError, ValueError, TypeError, OverflowError, MemoryError)
# The compressed containers, each with the FFmpeg demuxer that is forced on it.
_DEMUXERS = {"FLAC": "flac", "Ogg": "ogg", "MP3": "mp3", "MP4": "mov", "WebM/Matroska": "matroska"}


def decode_wav(data: bytes | bytearray, max_seconds: float) -> DecodedAudio:
    """Decode a RIFF/WAVE file to 16 kHz mono float32, or raise ``InvalidAudio``/``AudioTooLong``."""
    _check_container(data)
    try:
        with sf.SoundFile(io.BytesIO(data)) as wav:
            _check_format(wav)
            rate, channels, frames = wav.samplerate, wav.channels, wav.frames
            if frames / rate > max_seconds:  # from the header: nothing decoded
                raise _too_long(frames / rate, max_seconds)
            mono, n_frames = _decode_blocks(_read_blocks(wav), rate, channels, max_seconds, "WAV")
    except sf.LibsndfileError as exc:
        raise InvalidAudio(f"not a readable WAV file: {exc.error_string}") from None
    except _DECODER_FAILURES as exc:
        raise InvalidAudio(f"not a readable WAV file: {type(exc).__name__}") from None
    return _decoded(mono, n_frames, rate, channels, "the WAV file")


def decode_audio(data: bytes | bytearray, max_seconds: float) -> DecodedAudio:
    """Decode WAV, FLAC, Ogg, MP3, m4a/mp4 or WebM to 16 kHz mono float32 (see the module docstring)."""
    container = _container_of(data)
    if container == "WAV":
        return decode_wav(data, max_seconds)
    if container in _DEMUXERS:
        return _decode_pyav(data, max_seconds, _DEMUXERS[container])
    raise InvalidAudio("unrecognised audio: send WAV, FLAC, Ogg (Vorbis or Opus), MP3, M4A/MP4 or WebM")


def _container_of(data: bytes | bytearray) -> str | None:
    if len(data) >= 12 and data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "WAV"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "MP4"
    return next((name for magic, name in _OTHER_CONTAINERS if data.startswith(magic)), None)


def _too_long(duration: float, max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"audio is {duration:.1f} s long; this server accepts at most {max_seconds:g} s")


def _decode_pyav(data: bytes | bytearray, max_seconds: float, demuxer: str) -> DecodedAudio:
    try:
        with av.open(io.BytesIO(data), format=demuxer, mode="r") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file holds no audio stream")
            stream = container.streams.audio[0]
            rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
            if not MIN_RATE <= rate <= MAX_RATE or not 1 <= channels <= MAX_CHANNELS:
                raise InvalidAudio(f"{channels} channels at {rate} Hz; at most {MAX_CHANNELS} channels "
                                   f"at {MIN_RATE}..{MAX_RATE} Hz are accepted")
            # Whatever the codec's sample format, packed float32 at the stream's rate and layout.
            resampler = av.AudioResampler(format="flt", layout=stream.codec_context.layout, rate=rate)
            frames = (converted.to_ndarray().reshape(-1, channels)
                      for frame in container.decode(stream) for converted in resampler.resample(frame))
            mono, n_frames = _decode_blocks(_grouped(frames), rate, channels, max_seconds, demuxer)
    except av.FFmpegError as exc:
        raise InvalidAudio(f"not a readable {demuxer} file: {exc.strerror or type(exc).__name__}") from None
    except _DECODER_FAILURES as exc:
        raise InvalidAudio(f"not a readable {demuxer} file: {type(exc).__name__}") from None
    return _decoded(mono, n_frames, rate, channels, "the file")


def _decoded(mono: np.ndarray, n_frames: int, rate: int, channels: int, what: str) -> DecodedAudio:
    if n_frames == 0:
        raise InvalidAudio(f"{what} holds no samples")
    return DecodedAudio(samples=mono, duration_s=n_frames / rate, source_rate=rate, channels=channels)


def _read_blocks(source: sf.SoundFile) -> Iterator[np.ndarray]:
    while True:
        yield source.read(BLOCK_FRAMES, dtype="float32", always_2d=True)


def _grouped(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Codec frames (about a thousand samples each) gathered into blocks of ``BLOCK_FRAMES``."""
    held: list[np.ndarray] = []
    count = 0
    for frame in frames:
        held.append(frame)
        count += frame.shape[0]
        if count >= BLOCK_FRAMES:
            yield np.concatenate(held)
            held, count = [], 0
    # A short block ends the stream, as soundfile's short read does.
    yield np.concatenate(held) if held else np.zeros((0, 1), dtype=np.float32)


def _decode_blocks(blocks: Iterator[np.ndarray], rate: int, channels: int, max_seconds: float,
                   container: str) -> tuple[np.ndarray, int]:
    """The whole file as 16 kHz mono float32, clipped to full scale, and the source frames read.

    ``blocks`` are (frames, channels) float32; one shorter than ``BLOCK_FRAMES`` is the last.
    """
    stream = soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32", quality="HQ") \
        if rate != TARGET_RATE else None
    parts: list[np.ndarray] = []
    n_frames = 0
    max_frames = max_seconds * rate
    while True:
        block = next(blocks)
        last = block.shape[0] < BLOCK_FRAMES
        n_frames += block.shape[0]
        if n_frames > max_frames:  # counted as it decodes, whatever the header said
            raise _too_long(n_frames / rate, max_seconds)
        if not np.all(np.isfinite(block)):
            raise InvalidAudio(f"the {container} file holds NaN or infinite samples")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, once
            mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
        if stream is not None:
            mono = stream.resample_chunk(mono, last=last)
        # Finite float samples near float32's limit overflow the downmix or the resampler.
        if not np.all(np.isfinite(mono)):
            raise InvalidAudio(f"the {container} file holds float samples too large to downmix or resample")
        # Float WAVs may hold any finite value; a DAC clips at full scale, and so does this.
        parts.append(np.clip(mono, -1.0, 1.0))
        if last:
            break
    samples = np.concatenate(parts) if len(parts) != 1 else parts[0]
    return np.ascontiguousarray(samples, dtype=np.float32), n_frames


def _check_container(data: bytes | bytearray) -> None:
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
