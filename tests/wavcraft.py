"""Hand-built RIFF/WAVE files whose every header field can lie: the bad-input corpus' raw material."""

from __future__ import annotations

import struct

import numpy as np

# WAVE format tags
PCM, IEEE_FLOAT, ALAW, MULAW = 1, 3, 6, 7
IMA_ADPCM, MPEG_LAYER3, GSM610, EXTENSIBLE = 0x11, 0x55, 0x31, 0xFFFE


def riff(data: bytes = b"\x00\x00" * 1600, *, fmt_tag: int = PCM, channels: int = 1, rate: int = 16_000,
         bits: int = 16, riff_size: int | None = None, data_size: int | None = None, form: bytes = b"WAVE",
         magic: bytes = b"RIFF", fmt_size: int = 16, block_align: int | None = None,
         extra_chunks: bytes = b"", with_fmt: bool = True, with_data: bool = True) -> bytes:
    """A WAV file; any field given is written as given, true or not."""
    align = block_align if block_align is not None else max(1, channels * bits // 8)
    fmt_body = struct.pack("<HHIIHH", fmt_tag & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                           (rate * align) & 0xFFFFFFFF, align & 0xFFFF, bits & 0xFFFF)
    # The body is as long as declared, up to 64 bytes: a size that lies stays a lie, not a huge file.
    fmt_body = fmt_body.ljust(min(fmt_size, 64), b"\x00")[:max(fmt_size, 0)]
    chunks = b""
    if with_fmt:
        chunks += b"fmt " + struct.pack("<I", fmt_size & 0xFFFFFFFF) + fmt_body
    chunks += extra_chunks
    if with_data:
        size = len(data) if data_size is None else data_size
        chunks += b"data" + struct.pack("<I", size & 0xFFFFFFFF) + data
    size = 4 + len(chunks) if riff_size is None else riff_size
    return magic + struct.pack("<I", size & 0xFFFFFFFF) + form + chunks


def float_wav(samples: np.ndarray, rate: int = 16_000) -> bytes:
    """IEEE float32 mono, samples written as given (NaN and inf included)."""
    return riff(samples.astype("<f4").tobytes(), fmt_tag=IEEE_FLOAT, bits=32, rate=rate)
