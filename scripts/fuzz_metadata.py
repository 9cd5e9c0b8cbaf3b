"""atheris harness for the metadata frame: parse_metadata, the key ring, parse_transcribe.

Only ``AsrError`` may leave the parsers; any other exception, or a parsed request
that breaks the contract (the ``assert``s below), escapes TestOneInput and
libFuzzer reports it as a crash with the input saved. An input that is valid
UTF-8 is sent as a text frame (str); any other is sent as a binary frame (bytes)
and, decoded with surrogateescape, as text with lone surrogates.

Run: .venv/bin/python scripts/fuzz_metadata.py [--runs N] [--max-len N] [libFuzzer flags]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from atheris.import_hook import instrument_imports

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_runner import main

with instrument_imports(include=["asr_server"]):
    from asr_server.admission import KeyRing
    from asr_server.contract.domain import SUPPORTED_LANGUAGES, TASKS
    from asr_server.contract.errors import AsrError
    from asr_server.contract.frames import api_key, parse_metadata, parse_transcribe

KEYS = ("k1", "k2")
KEYRING = KeyRing(KEYS)


def check_frame(frame: str | bytes) -> None:
    """Run a frame through the server's order of checks; raise on anything but AsrError."""
    try:
        obj = parse_metadata(frame)
    except AsrError:
        return
    assert isinstance(obj, dict) and obj.get("type") in ("transcribe", "ping"), obj
    key = obj.get("api_key")
    assert KEYRING.allows(api_key(obj)) is (isinstance(key, str) and key in KEYS), key
    if obj["type"] == "ping":
        return
    try:
        request = parse_transcribe(obj)
    except AsrError:
        return
    assert request.language is None or request.language in SUPPORTED_LANGUAGES, request
    assert isinstance(request.task, str) and request.task in TASKS, request
    assert isinstance(request.machine_id, str), request
    assert request.postprocess in (None, True, False), request


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        check_frame(data)
        check_frame(data.decode("utf-8", "surrogateescape"))
    else:
        check_frame(text)


SEEDS: list[Any] = [
    {"type": "ping"},
    {"type": "transcribe"},
    {"type": "transcribe", "language": "bg", "task": "translate", "machine_id": "m-1",
     "postprocess": True, "api_key": "k1"},
    {"type": "transcribe", "language": " Auto ", "task": None, "postprocess": None, "api_key": "k2"},
    {"type": "transcribe", "language": None, "machine_id": 7, "extra": [1, {"a": None}]},
    {"type": "transcribe", "language": "xx", "api_key": "k3"},
    {"type": "transcribe", "language": 5, "task": "summarize", "postprocess": "yes"},
    {"type": "pong"},
    {"language": "en"},
    [],
    "transcribe",
    1e308,
]
RAW_SEEDS = [b"", b"{", b'{"type": "ping"', b"[[[[[[[[[[]]]]]]]]]]", b'{"type": "ping", "type": 1}',
             b'{"type": "transcribe", "language": "\\ud800"}', b"\xff\xfe{}", b"NaN", b"-Infinity"]

DICTIONARY = {f"t{i}": token.encode() for i, token in enumerate((
    '"type"', '"transcribe"', '"ping"', '"language"', '"task"', '"translate"', '"machine_id"',
    '"postprocess"', '"api_key"', '"k1"', '"k2"', '"auto"', '"en"', '"bg"', "true", "false", "null",
    "NaN", "Infinity", "1e999", "-0", "\\u0000", "\\ud800", "{", "}", "[", "]", ":", ",",
))}


def write_seeds(corpus: Path) -> None:
    frames = [json.dumps(seed).encode() for seed in SEEDS] + RAW_SEEDS
    for i, frame in enumerate(frames):
        (corpus / f"seed-{i:02d}").write_bytes(frame)


if __name__ == "__main__":
    sys.exit(main("fuzz_metadata", test_one_input, write_seeds, DICTIONARY, max_len=4096))
