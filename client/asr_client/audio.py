"""Turning what the caller gives (a path or bytes, in any format soundfile reads) into the WAV the wire needs.

The wire takes one RIFF/WAVE file. A WAV (RIFF or RF64) goes as it is, byte for
byte: the server reads every PCM and float WAV and resamples itself, so
re-encoding could only lose precision. Anything else libsndfile decodes (FLAC,
Ogg/Vorbis, Opus, MP3, AIFF, ...) is decoded here and sent as mono 16-bit PCM
WAV at its own sample rate, the spec's format. Where PyAV is installed
(``pip install ./client[av]``: FFmpeg's decoders), what libsndfile cannot read
(m4a, mp4, WebM, ...) is decoded by it instead. Failures are
``unreadable_audio``, raised before any connection is made.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf

from asr_client.errors import AsrClientError

AudioSource = str | os.PathLike[str] | bytes


def is_wav(data: bytes) -> bool:
    # RIFF/WAVE, or RF64 (a WAV over 4 GiB); the server reads both.
    return len(data) >= 12 and data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE"


def read_source(source: AudioSource) -> tuple[bytes, str]:
    """The bytes of ``source`` and a name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    name = os.fspath(source)
    try:
        with open(name, "rb") as handle:
            return handle.read(), name
    except OSError as exc:
        raise AsrClientError("unreadable_audio", f"{name}: {exc.strerror or exc}") from None


def to_wav(data: bytes, name: str = "<bytes>") -> bytes:
    """``data`` as a WAV file: unchanged if it is one, else decoded and written as mono PCM 16."""
    if is_wav(data):
        return data
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        # The spec's wire format is mono; the server would average the channels the same way.
        mono = samples.mean(axis=1, dtype=np.float32)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile's own words ("Format not recognised."), without the BytesIO repr around them.
        why = getattr(exc, "error_string", None) or str(exc)
        decoded = _decode_with_pyav(data)
        if decoded is None:
            detail = f"{name}: not audio that soundfile (or PyAV, if installed) reads ({why})"
            raise AsrClientError("unreadable_audio", detail) from None
        mono, rate = decoded
    if mono.shape[0] == 0:
        raise AsrClientError("unreadable_audio", f"{name}: the file holds no samples")
    buf = io.BytesIO()
    sf.write(buf, mono, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _decode_with_pyav(data: bytes) -> tuple[np.ndarray, int] | None:
    """Mono float32 samples and their rate, by FFmpeg, if PyAV is installed and reads ``data``."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts = [converted.to_ndarray().reshape(-1) for frame in container.decode(stream)
                     for converted in resampler.resample(frame)]
    except (av.FFmpegError, RuntimeError, TypeError, ValueError):
        return None
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), rate
