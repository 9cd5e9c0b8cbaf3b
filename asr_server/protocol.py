"""The wire contract without I/O: parse the metadata frame, check keys, build every frame.

Nothing here touches a socket, so the whole contract is tested without one.
The order matters and is the server's: ``parse_metadata`` (JSON and type),
then ``KeyRing.allows`` (before any other field is judged or audio read),
then ``parse_transcribe``.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from asr_server.errors import AsrError, BadRequest, UnsupportedLanguage

MAX_METADATA_BYTES = 64 * 1024
# whisper reads at most 223 tokens of prompt; a few thousand characters hold more than that.
MAX_PROMPT_CHARS = 2000

SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "bg", "en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "cs", "da", "sv",
    "hr", "el", "hu", "ro", "sk", "sl", "et", "fi", "lv", "lt", "mt", "uk",
)
TASKS = ("transcribe", "translate")
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


@dataclass(frozen=True)
class TranscribeOptions:
    """What the engine needs of a request."""

    language: str | None  # None: detect among SUPPORTED_LANGUAGES
    task: str  # "transcribe" | "translate"
    prompt: str | None = None  # names and terms the speaker uses (whisper's initial prompt)
    word_timestamps: bool = False
    temperature: float = 0.0  # the first; whisper falls back to hotter ones from here


@dataclass(frozen=True)
class Word:
    word: str  # as whisper spells it, with its leading space
    start: float  # seconds
    end: float  # seconds
    probability: float


@dataclass(frozen=True)
class Segment:
    text: str
    start: float  # seconds
    end: float  # seconds
    words: tuple[Word, ...] | None = None  # only when the request asked for word timestamps


@dataclass(frozen=True)
class Transcription:
    """What the engine returns for one request."""

    text: str
    segments: tuple[Segment, ...]
    language: str


@dataclass(frozen=True)
class PostprocessOutcome:
    """The three post-processing fields of a result, and whether an LLM call was made or waited for."""

    text: str | None = None
    ms: float = 0.0
    error: str | None = None
    called: bool = False


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


class KeyRing:
    """The accepted API keys; several at once so keys can be rotated."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode("utf-8") for k in keys)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def allows(self, obj: dict[str, Any]) -> bool:
        """Constant-time check of the metadata's ``api_key``; every key is compared, match or not."""
        return self.allows_key(obj.get("api_key"))

    def allows_key(self, candidate: object) -> bool:
        """Constant-time check of one key as given (an HTTP bearer token, say)."""
        if not self._keys:
            return True
        if not isinstance(candidate, str):
            return False
        given = candidate.encode("utf-8", "surrogatepass")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} keys)"


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
