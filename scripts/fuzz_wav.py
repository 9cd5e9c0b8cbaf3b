"""atheris harness for decode_wav: every input is refused with AsrError or decodes to sane samples.

Only ``AsrError`` (``InvalidAudio``, ``AudioTooLong``) may leave ``decode_wav``;
any other exception, or a decoded result that breaks the contract (the
``assert``s in ``check_wav``: float32, 1-D, C-contiguous, finite, 16 kHz length
matching the duration, duration within the limit), escapes TestOneInput and
libFuzzer reports it as a crash with the input saved. The seed corpus is real
WAV files written by soundfile.

Run: .venv/bin/python scripts/fuzz_wav.py [--runs N] [--max-len N] [libFuzzer flags]
"""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from atheris.import_hook import instrument_imports
from atheris.instrument_bytecode import instrument_func

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_runner import main

with instrument_imports(include=["asr_server"]):
    from asr_server.contract.errors import AsrError
    from asr_server.engine.audio_decoding import (
        MAX_CHANNELS,
        MAX_RATE,
        MIN_RATE,
        TARGET_RATE,
        DecodedAudio,
        decode_wav,
    )

MAX_SECONDS = 600.0


@instrument_func
def check_wav(data: bytes) -> None:
    try:
        audio = decode_wav(data, MAX_SECONDS)
    except AsrError:
        return
    samples = audio.samples
    _feedback(audio)
    assert samples.dtype == np.float32 and samples.ndim == 1, (samples.dtype, samples.shape)
    assert samples.flags.c_contiguous
    assert np.all(np.isfinite(samples)), "non-finite samples"
    assert 0 < audio.duration_s <= MAX_SECONDS, audio.duration_s
    assert MIN_RATE <= audio.source_rate <= MAX_RATE and 1 <= audio.channels <= MAX_CHANNELS, audio
    assert abs(len(samples) - audio.duration_s * TARGET_RATE) <= 1, (len(samples), audio.duration_s)


@instrument_func
def _feedback(audio: DecodedAudio) -> list[str]:
    """Branches on what libsndfile decoded, which coverage of Python code alone cannot see.

    Each branch is a coverage feature, so libFuzzer keeps inputs that reach a new
    kind of result (channel count, resampled or not, length, loudness), and the
    loudness ladder leads it towards extreme sample values.
    """
    kind = []
    if audio.channels == 1:
        kind.append("mono")
    elif audio.channels == 2:
        kind.append("stereo")
    elif audio.channels > 8:
        kind.append("many channels")
    if audio.source_rate == TARGET_RATE:
        kind.append("16 kHz")
    elif audio.source_rate < TARGET_RATE:
        kind.append("upsampled")
    elif audio.source_rate > 96_000:
        kind.append("high rate")
    if len(audio.samples) == 0:
        return [*kind, "empty"]
    if len(audio.samples) > TARGET_RATE:
        kind.append("long")
    peak = float(np.max(np.abs(audio.samples)))
    if peak > 1.0:
        kind.append("over 1")
        if peak > 1e6:
            kind.append("over 1e6")
            if peak > 1e30:
                kind.append("over 1e30")
    return kind


def _wav(samples: np.ndarray, rate: int, subtype: str, container: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=container, subtype=subtype)
    return buf.getvalue()


def seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)

    def noise(frames: int, channels: int = 1) -> np.ndarray:
        return (0.5 * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)

    return {
        "pcm16-mono-16k.wav": _wav(noise(400), 16_000, "PCM_16"),
        "pcmu8-mono-8k.wav": _wav(noise(200), 8_000, "PCM_U8"),
        "float-stereo-44k.wav": _wav(noise(441, 2), 44_100, "FLOAT"),
        "one-sample.wav": _wav(noise(1), 16_000, "PCM_16"),
        "pcm24-wavex-3ch-22k.wav": _wav(noise(220, 3), 22_050, "PCM_24", "WAVEX"),
        "double-mono-48k.wav": _wav(noise(480), 48_000, "DOUBLE"),
        "pcm32-rf64-16k.wav": _wav(noise(160), 16_000, "PCM_32", "RF64"),
    }


def write_seeds(corpus: Path) -> None:
    for name, data in seed_files().items():
        (corpus / name).write_bytes(data)


DICTIONARY = {
    "riff": b"RIFF", "rf64": b"RF64", "wave": b"WAVE", "fmt": b"fmt ", "data": b"data", "ds64": b"ds64",
    "fact": b"fact", "list": b"LIST", "pcm": b"\x01\x00", "float": b"\x03\x00", "extensible": b"\xfe\xff",
    "r16k": struct.pack("<I", 16_000), "r44k": struct.pack("<I", 44_100), "r8k": struct.pack("<I", 8_000),
    "r192k": struct.pack("<I", 192_000), "huge": b"\xff\xff\xff\xff", "fmax": struct.pack("<f", 3.4e38),
    "fnan": struct.pack("<f", float("nan")), "dmax": struct.pack("<d", 1.7e308),
}


if __name__ == "__main__":
    sys.exit(main("fuzz_wav", check_wav, write_seeds, DICTIONARY, max_len=65536))
