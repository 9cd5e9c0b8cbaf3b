"""Property tests (hypothesis) of the two parsers of client input: only the project's own errors come out.

Owns the "hard to break" contract of ``asr_server.contract.frames`` (``parse_metadata``,
``the key ring``, ``parse_transcribe``) and ``asr_server.engine.audio_decoding.decode_wav`` for
*any* input: arbitrary text and bytes, JSON built from strategies, RIFF/WAVE
files whose header fields are drawn at random, and mutations of real WAV files.
Every input either raises an ``AsrError`` subclass or gives a result that keeps
the contract (a request whose fields match a model of the rules; float32 mono
samples that are finite and contiguous, no longer than the limit). The
example-based tests of the same functions live in test_protocol.py and
test_audio.py; the coverage-guided counterparts are scripts/fuzz_metadata.py and
scripts/fuzz_wav.py (runs recorded in docs/fuzz-runs.md). Inputs those found are
kept below as regression cases and in tests/fuzz_regressions/.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from asr_server.admission import KeyRing
from asr_server.contract.domain import SUPPORTED_LANGUAGES, TASKS
from asr_server.contract.errors import AsrError, AudioTooLong, BadRequest, InvalidAudio, UnsupportedLanguage
from asr_server.contract.frames import (
    MAX_METADATA_BYTES,
    TranscribeRequest,
    api_key,
    parse_metadata,
    parse_transcribe,
)
from asr_server.engine.audio_decoding import MAX_CHANNELS, MAX_RATE, MIN_RATE, TARGET_RATE, decode_wav

KEYS = ("k1", "k2")
KEYRING = KeyRing(KEYS)
MAX_SECONDS = 600.0
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"

METADATA_RUNS = settings(max_examples=500, deadline=None)
WAV_RUNS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def note(outcome: str) -> None:
    """Count an outcome for --hypothesis-show-statistics (the regression tests call outside hypothesis)."""
    if currently_in_test_context():
        event(outcome)


# --- metadata ---------------------------------------------------------------------------------------

def check_frame(frame: str | bytes) -> TranscribeRequest | AsrError | None:
    """The server's order: parse_metadata, the key ring, parse_transcribe (not for a ping).

    Returns the request, the AsrError raised, or None for a ping; any other
    exception fails the test.
    """
    try:
        obj = parse_metadata(frame)
    except AsrError as exc:
        note(f"parse_metadata: {exc.code}")
        return exc
    assert isinstance(obj, dict) and obj.get("type") in ("transcribe", "ping")
    key = obj.get("api_key")
    assert KEYRING.allows(api_key(obj)) is (isinstance(key, str) and key in KEYS)
    if obj["type"] == "ping":
        note("ping")
        return None
    try:
        request = parse_transcribe(obj)
    except AsrError as exc:
        note(f"parse_transcribe: {exc.code}")
        return exc
    note("transcribe request")
    assert request.language is None or request.language in SUPPORTED_LANGUAGES
    assert isinstance(request.task, str) and request.task in TASKS
    assert isinstance(request.machine_id, str)
    assert request.postprocess in (None, True, False)
    return request


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
                | st.floats() | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
LANGUAGE_SPELLINGS = ("", "auto", "AUTO", " Auto\n", " en ", "EN", "xx", "english", "en-US", "İ", "bg\x00")
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["transcribe", "ping", "Transcribe", "pong", ""]) | json_values,
    "language": st.sampled_from(SUPPORTED_LANGUAGES + LANGUAGE_SPELLINGS) | json_values,
    "task": st.sampled_from([*TASKS, None, "TRANSLATE", "summarize"]) | json_values,
    "machine_id": st.text(max_size=30) | json_values,
    "postprocess": st.sampled_from([True, False, None, 0, 1, "true"]) | json_values,
    "api_key": st.sampled_from([*KEYS, "k3", "", " k1", "K1", "k1\x00"]) | json_values,
}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A metadata object: each known field present (mostly plausible, sometimes any JSON) or absent, plus
    unknown fields. Most have a right "type", so that most reach parse_transcribe."""
    obj = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in FIELDS), json_values,
                               max_size=3))
    kind = draw(st.sampled_from(["transcribe", "transcribe", "transcribe", "ping", "other", "absent"]))
    if kind == "other":
        obj["type"] = draw(FIELDS["type"])
    elif kind != "absent":
        obj["type"] = kind
    for name, values in FIELDS.items():
        if name != "type" and draw(st.booleans()):
            obj[name] = draw(values)
    return obj


def expected_outcome(obj: dict[str, Any]) -> set[type[AsrError]] | TranscribeRequest | None:
    """A model of the rules: the errors the object may raise (any one of them), or the result."""
    if obj.get("type") not in ("transcribe", "ping"):
        return {BadRequest}
    if obj["type"] == "ping":
        return None
    errors: set[type[AsrError]] = set()
    language = obj.get("language")
    if isinstance(language, str):
        language = language.strip().lower()
        if language in ("", "auto"):
            language = None
        elif language not in SUPPORTED_LANGUAGES:
            errors.add(UnsupportedLanguage)
    elif language is not None:
        errors.add(BadRequest)
    task = obj.get("task")
    task = "transcribe" if task is None else task
    if not (isinstance(task, str) and task in TASKS):
        errors.add(BadRequest)
    postprocess = obj.get("postprocess")
    if postprocess is not None and not isinstance(postprocess, bool):
        errors.add(BadRequest)
    if errors:
        return errors
    machine_id = obj.get("machine_id", "unknown")
    return TranscribeRequest(language=language, task=task, postprocess=postprocess,
                             machine_id=machine_id if isinstance(machine_id, str) else "invalid")


@METADATA_RUNS
@given(st.text(max_size=300))
@example("[" * 60_000)  # nesting deeper than the JSON parser's recursion limit
@example("1" * 5_000)  # more digits than int() converts
@example(" " * (MAX_METADATA_BYTES + 1))
@example("\ud800" * (MAX_METADATA_BYTES // 3 + 1))  # 3 bytes each in UTF-8: over the limit in bytes only
@example('{"type": "ping", "api_key": "\\ud800"}')  # a lone surrogate key
@example('{"type": "transcribe", "language": "\\u0130"}')  # "İ".lower() is two code points
def test_metadata_any_text(frame: str) -> None:
    outcome = check_frame(frame)
    if isinstance(outcome, AsrError):
        assert isinstance(outcome, BadRequest | UnsupportedLanguage) and outcome.detail


@METADATA_RUNS
@given(st.binary(max_size=300))
@example(b'{"type": "ping"}')
def test_metadata_binary_frame_is_bad_request(frame: bytes) -> None:
    assert isinstance(check_frame(frame), BadRequest)


@METADATA_RUNS
@given(json_values, st.booleans())
def test_metadata_any_json_value(value: Any, ensure_ascii: bool) -> None:
    outcome = check_frame(json.dumps(value, ensure_ascii=ensure_ascii))
    if not isinstance(value, dict) or value.get("type") not in ("transcribe", "ping"):
        assert isinstance(outcome, BadRequest)


@METADATA_RUNS
@given(requests(), st.booleans())
@example({"type": "transcribe", "language": " Auto\n", "task": None, "api_key": "k2"}, True)
@example({"type": "transcribe", "language": "xx", "task": "summarize", "postprocess": 1}, True)
@example({"type": "ping", "language": 5, "api_key": ["k1"]}, False)
def test_metadata_requests_follow_the_rules(obj: dict[str, Any], ensure_ascii: bool) -> None:
    outcome = check_frame(json.dumps(obj, ensure_ascii=ensure_ascii))
    expected = expected_outcome(obj)
    if isinstance(expected, set):
        assert type(outcome) in expected, (outcome, expected)
    else:
        assert outcome == expected


# --- WAV ----------------------------------------------------------------------------------------------

def check_wav(data: bytes) -> AsrError | None:
    """decode_wav(data, 600): an InvalidAudio/AudioTooLong, or samples that keep the contract."""
    try:
        audio = decode_wav(data, MAX_SECONDS)
    except AsrError as exc:
        assert isinstance(exc, InvalidAudio | AudioTooLong) and exc.detail
        note(f"{exc.code}: {exc.detail.split(':')[0][:40]}")
        return exc
    note(f"decoded, {audio.channels} channel(s)")
    samples = audio.samples
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.flags.c_contiguous
    assert np.all(np.isfinite(samples))
    assert 0 < audio.duration_s <= MAX_SECONDS
    assert MIN_RATE <= audio.source_rate <= MAX_RATE and 1 <= audio.channels <= MAX_CHANNELS
    assert abs(len(samples) - audio.duration_s * TARGET_RATE) <= 1
    return None


def u16() -> st.SearchStrategy[int]:
    return st.integers(0, 0xFFFF)


def u32() -> st.SearchStrategy[int]:
    return st.integers(0, 0xFFFF_FFFF)


def chunk(tag: bytes, body: bytes, size: int | None = None) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return tag + struct.pack("<I", len(body) if size is None else size) + body + pad


GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
VALID_ENCODINGS = [(1, 16), (1, 8), (1, 24), (1, 32), (3, 32), (3, 64)]  # (format tag, bits per sample)
VALID_RATES = [16_000, 8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 192_000]


FLT_MAX = float(np.finfo(np.float32).max)
# Boundary values: float32's limit and half of it (finite, but two of them overflow a float32 sum).
EXTREMES = st.sampled_from([FLT_MAX, -FLT_MAX, FLT_MAX / 2, -FLT_MAX / 2, 1.0, -1.0, 0.0])


def samples_for(tag: int, bits: int, channels: int) -> st.SearchStrategy[bytes]:
    """At least one frame of samples that suit the encoding (extreme floats included), or any bytes."""
    if (tag, bits) == (3, 32):
        floats = st.lists(st.floats(width=32) | EXTREMES, min_size=channels, max_size=256)
        return floats.map(lambda xs: struct.pack(f"<{len(xs)}f", *xs))
    if (tag, bits) == (3, 64):
        doubles = st.lists(st.floats() | EXTREMES, min_size=channels, max_size=128)
        return doubles.map(lambda xs: struct.pack(f"<{len(xs)}d", *xs))
    return st.binary(min_size=min(channels * bits // 8, 1024), max_size=1024)


@st.composite
def wav_files(draw: st.DrawFn) -> bytes:
    """A RIFF/WAVE file built field by field with struct.

    Half are well formed (a valid encoding, rate and channel count, every size right)
    so that libsndfile decodes them and the samples reach the downmix and the resampler;
    in the other half each header field and chunk size is right or drawn at random.
    """
    sane = draw(st.booleans())

    def field(right: int, wild: st.SearchStrategy[int]) -> int:
        return right if sane else draw(st.just(right) | wild)

    tag, bits = draw(st.sampled_from(VALID_ENCODINGS))
    tag = field(tag, st.sampled_from([0xFFFE, 0, 2, 6, 7, 0x11, 0x55]) | u16())
    bits = field(bits, st.sampled_from([0, 1, 12, 48]) | u16())
    channels = field(draw(st.sampled_from([1, 2, 3, 32])), st.sampled_from([0, 33]) | u16())
    rate = field(draw(st.sampled_from(VALID_RATES)), st.sampled_from([0, 1, 7_999, 192_001]) | u32())
    block_align = field(channels * bits // 8 & 0xFFFF, u16())
    byte_rate = field(rate * block_align & 0xFFFF_FFFF, u32())
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, block_align, bits)
    if tag == 0xFFFE or (not sane and draw(st.booleans())):  # WAVE_FORMAT_EXTENSIBLE's extra fields
        sub = draw(st.sampled_from([1, 3, 2, 0]) | u16())
        guid = draw(st.just(struct.pack("<H", sub) + GUID_TAIL) | st.binary(min_size=16, max_size=16))
        fmt += struct.pack("<HHI", 22, draw(st.just(bits) | u16()), draw(u32())) + guid
    data = draw(samples_for(tag, bits, channels) if sane else st.binary(max_size=1024))
    chunks = chunk(b"fmt ", fmt, None if sane else draw(st.none() | u32()))
    for _ in range(draw(st.integers(0, 2))):
        known = st.sampled_from([b"LIST", b"JUNK", b"fact"])
        extra_tag = draw(known if sane else known | st.sampled_from([b"PEAK", b"cue ", b"data", b"fmt "])
                         | st.binary(min_size=4, max_size=4))
        chunks += chunk(extra_tag, draw(st.binary(max_size=32)), None if sane else draw(st.none() | u32()))
    chunks += chunk(b"data", data, None if sane else draw(st.none() | u32()))
    if not sane and draw(st.booleans()):
        chunks = chunks[: draw(st.integers(0, len(chunks)))]  # truncated in flight
    body = b"WAVE" + chunks
    magic = b"RIFF" if sane else draw(st.sampled_from([b"RIFF", b"RF64"]))
    return magic + struct.pack("<I", field(len(body), u32())) + body


def real_wav(frames: int, channels: int, rate: int, subtype: str, container: str = "WAV") -> bytes:
    t = np.arange(frames * channels, dtype=np.float32).reshape(frames, channels)
    buf = io.BytesIO()
    sf.write(buf, 0.5 * np.sin(t), rate, format=container, subtype=subtype)
    return buf.getvalue()


REAL_WAVS = (
    real_wav(160, 1, 16_000, "PCM_16"),
    real_wav(80, 1, 8_000, "PCM_U8"),
    real_wav(100, 2, 44_100, "FLOAT"),
    real_wav(1, 1, 16_000, "PCM_16"),
    real_wav(50, 3, 22_050, "PCM_24", "WAVEX"),
    real_wav(60, 1, 48_000, "DOUBLE", "RF64"),
)


@st.composite
def mutated_wavs(draw: st.DrawFn) -> bytes:
    """A real WAV written by soundfile, then bytes overwritten, bits flipped, bytes inserted or cut."""
    data = bytearray(draw(st.sampled_from(REAL_WAVS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]) | st.integers(0, 255))
        elif op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@WAV_RUNS
@given(st.binary(max_size=2048))
def test_wav_any_bytes(data: bytes) -> None:
    outcome = check_wav(data)
    if data[8:12] != b"WAVE":
        assert isinstance(outcome, InvalidAudio)


@WAV_RUNS
@given(st.sampled_from([b"RIFF", b"RF64"]), u32(), st.binary(max_size=2048))
def test_wav_any_bytes_after_a_riff_header(magic: bytes, size: int, rest: bytes) -> None:
    check_wav(magic + struct.pack("<I", size) + b"WAVE" + rest)


@WAV_RUNS
@given(wav_files())
def test_wav_structured_headers(data: bytes) -> None:
    check_wav(data)


@WAV_RUNS
@given(mutated_wavs())
def test_wav_mutations_of_real_files(data: bytes) -> None:
    check_wav(data)


def float_wav(samples: list[float], channels: int, rate: int) -> bytes:
    data = struct.pack(f"<{len(samples)}f", *samples)
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_real_wavs_decode() -> None:
    """The unmutated files decode: the mutation test starts from inputs that pass."""
    for data in REAL_WAVS:
        assert check_wav(data) is None


# Found by scripts/fuzz_wav.py (docs/fuzz-runs.md): finite float samples near float32's limit made NaN or
# inf in the downmix (float32 mean) or the resampler; decode_wav returned them. Now invalid_audio.
FLOAT_OVERFLOWS = {
    "downmix": float_wav([3.1e38, 3.1e38], 2, 16_000),
    "resample": float_wav([3.4e38, -3.4e38], 1, 44_100),
    **{path.name: path.read_bytes() for path in sorted(REGRESSIONS.glob("*.wav"))},
}


@pytest.mark.parametrize("name", sorted(FLOAT_OVERFLOWS))
def test_regression_float_overflow_is_invalid_audio(name: str) -> None:
    error = check_wav(FLOAT_OVERFLOWS[name])
    assert isinstance(error, InvalidAudio) and "too large" in error.detail


def test_loud_float_that_does_not_overflow_still_decodes() -> None:
    """Only an overflow is refused: samples over 1.0 that downmix and resample finitely are kept."""
    assert check_wav(float_wav([3.1e38, 0.0], 2, 16_000)) is None
    assert check_wav(float_wav([0.0, 3.4e38, 0.0, 0.0], 1, 44_100)) is None
    assert math.isfinite(decode_wav(float_wav([2.0, -2.0] * 50, 1, 44_100), MAX_SECONDS).samples.sum())
