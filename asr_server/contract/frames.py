"""The wire contract without I/O: parse the metadata frame, check keys, build every frame.

Nothing here touches a socket, so the whole contract is tested without one.
The order matters and is the server's: ``parse_metadata`` (JSON and type),
then the key (``api_key``, judged by the service before any other field or audio),
then ``parse_transcribe``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from asr_server.contract.domain import (
    SUPPORTED_LANGUAGES,
    TASKS,
    PostprocessOutcome,
    Segment,
    Transcription,
)
from asr_server.contract.errors import AsrError, BadRequest, UnsupportedLanguage

MAX_METADATA_BYTES = 64 * 1024
# whisper reads at most 223 tokens of prompt; a few thousand characters hold more than that.
MAX_PROMPT_CHARS = 2000

# Spellings of "detect" that clients send in the field besides null.
_DETECT = ("", "auto")


@dataclass(frozen=True)
class PingRequest:
    """``{"type": "ping"}``: answered with a pong, no key needed."""


@dataclass(frozen=True)
class TranscribeRequest:
    """A validated transcribe request (frame 1)."""

    language: str | None = None  # None: detect among SUPPORTED_LANGUAGES
    task: str = "transcribe"
    machine_id: str = "unknown"  # telemetry only: never fails a request
    postprocess: bool | None = None  # None: the server's default
    word_timestamps: bool = False
    prompt: str | None = None


def parse_metadata(frame: str | bytes) -> dict[str, Any]:
    """Frame 1 as a JSON object with a known ``type``; anything else is ``bad_request``."""
    if isinstance(frame, bytes):
        raise BadRequest("the first frame must be a JSON text frame with the request metadata")
    if len(frame) > MAX_METADATA_BYTES or len(frame.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata frame is larger than {MAX_METADATA_BYTES} bytes")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"metadata is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise BadRequest("metadata must be a JSON object")
    kind = obj.get("type")
    if kind not in ("transcribe", "ping"):
        raise BadRequest('"type" must be "transcribe" or "ping"')
    return obj


def is_ping(obj: dict[str, Any]) -> bool:
    return bool(obj.get("type") == "ping")


def parse_transcribe(obj: dict[str, Any]) -> TranscribeRequest:
    """Validate the transcribe fields; unknown fields are ignored."""
    language = obj.get("language")
    if language is not None:
        if not isinstance(language, str):
            raise BadRequest('"language" must be a string or null')
        language = language.strip().lower()
        if language in _DETECT:
            language = None
        elif language not in SUPPORTED_LANGUAGES:
            shown = language[:16]
            raise UnsupportedLanguage(
                f"language {shown!r} is not supported; use one of {', '.join(SUPPORTED_LANGUAGES)} or null"
            )
    task = obj.get("task", "transcribe")
    if task is None:
        task = "transcribe"
    if task not in TASKS:
        raise BadRequest('"task" must be "transcribe" or "translate"')
    postprocess = obj.get("postprocess")
    if postprocess is not None and not isinstance(postprocess, bool):
        raise BadRequest('"postprocess" must be true, false or absent')
    word_timestamps = obj.get("word_timestamps", False)
    if word_timestamps is None:
        word_timestamps = False
    if not isinstance(word_timestamps, bool):
        raise BadRequest('"word_timestamps" must be true, false or absent')
    prompt = obj.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise BadRequest('"prompt" must be a string or absent')
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f'"prompt" is longer than {MAX_PROMPT_CHARS} characters')
        prompt = prompt.strip() or None
    machine_id = obj.get("machine_id", "unknown")
    if not isinstance(machine_id, str):
        machine_id = "invalid"
    return TranscribeRequest(language=language, task=task, machine_id=machine_id,
                             postprocess=postprocess, word_timestamps=word_timestamps, prompt=prompt)


def api_key(obj: dict[str, Any]) -> object:
    """The key frame 1 carries (any JSON value; the key ring judges it)."""
    return obj.get("api_key")


def pong_frame() -> str:
    return json.dumps({"type": "pong", "status": "ok"})


def error_frame(error: AsrError) -> str:
    return json.dumps({"error": error.code, "detail": error.detail}, ensure_ascii=False)


def _segment(segment: Segment) -> dict[str, Any]:
    shown: dict[str, Any] = {"text": segment.text, "start": segment.start, "end": segment.end}
    if segment.words is not None:
        shown["words"] = [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                          for w in segment.words]
    return shown


def result_frame(transcription: Transcription, postprocess: PostprocessOutcome) -> str:
    return json.dumps(
        {
            "text": transcription.text,
            "segments": [_segment(s) for s in transcription.segments],
            "language": transcription.language,
            "postprocessed_text": postprocess.text,
            "postprocess_ms": postprocess.ms,
            "postprocess_error": postprocess.error,
        },
        ensure_ascii=False,
    )
