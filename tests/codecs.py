"""Test audio in the compressed formats the HTTP API accepts (PyAV's encoders; soundfile's FLAC, Vorbis)."""

from __future__ import annotations

import io

import av
import numpy as np
import soundfile as sf

# soundfile writes these: format name -> (format, subtype)
SOUNDFILE_ENCODINGS = {"flac": ("FLAC", "PCM_16"), "ogg-vorbis": ("OGG", "VORBIS")}
# PyAV writes these: format name -> (container, codec, sample rate it encodes at)
ENCODINGS = {
    "mp3": ("mp3", "libmp3lame", 16_000),
    "ogg-opus": ("ogg", "libopus", 48_000),
    "m4a": ("ipod", "aac", 16_000),
    "mp4": ("mp4", "aac", 16_000),
    "webm": ("webm", "libopus", 48_000),
}


def encode(samples: np.ndarray, rate: int, name: str) -> bytes:
    """Mono float32 ``samples`` at ``rate`` as a file of format ``name`` (either table's)."""
    if name in SOUNDFILE_ENCODINGS:
        buf = io.BytesIO()
        file_format, subtype = SOUNDFILE_ENCODINGS[name]
        with sf.SoundFile(buf, "w", rate, 1, format=file_format, subtype=subtype) as out:
            # In 10 s pieces: libsndfile's Vorbis encoder crashes on minutes written at once.
            for start in range(0, len(samples), 10 * rate):
                out.write(samples[start:start + 10 * rate])
        return buf.getvalue()
    container, codec, codec_rate = ENCODINGS[name]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=codec_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=codec_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        for converted in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
