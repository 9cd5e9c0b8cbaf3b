"""OpenAI's Realtime API in transcription mode, without I/O: client events judged, server events built.

The live endpoint (``transports/realtime.py``) reads a client event with
``parse_event`` and answers with the builders below; a wrong event raises
``EventError`` with OpenAI's error fields and one of our error codes, and the
session goes on. The session's settings are ``SessionSettings``, changed only
by ``session.update`` (the GA shape: ``session.audio.input.{format,
transcription, turn_detection}``) or the beta ``transcription_session.update``
(``input_audio_format``, ``input_audio_transcription``, ``turn_detection``).

Audio is ``audio/pcm``: 16-bit little-endian mono, 24 kHz as OpenAI sends it
(16 kHz too, our extension; the G.711 formats are refused). One extension
event, ``conversation.item.input_audio_transcription.tentative``, carries an
item's unconfirmed tail; each replaces the last, and a client that does not
know it ignores it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

from asr_server.contract.domain import SUPPORTED_LANGUAGES
from asr_server.contract.frames import MAX_PROMPT_CHARS

PCM_RATES = (24_000, 16_000)  # OpenAI's, then ours
TENTATIVE = "conversation.item.input_audio_transcription.tentative"
_SHAPES = ("session.update", "transcription_session.update")


class EventError(Exception):
    """A client event the session refuses; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id, self.kind = code, message, param, event_id, kind


@dataclass(frozen=True)
class ServerVad:
    """OpenAI's ``server_vad`` turn detection, with its defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SessionSettings:
    rate: int = 24_000
    language: str | None = None  # None: detected per item
    prompt: str | None = None
    model: str = "whisper-1"
    turn_detection: ServerVad | None = ServerVad()  # None: the client commits


@dataclass(frozen=True)
class SessionUpdate:
    settings: SessionSettings
    beta: bool  # answered in the shape it came in


@dataclass(frozen=True)
class Append:
    pcm: bytes  # s16le mono at the session's rate


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Clear:
    pass


ClientEvent = SessionUpdate | Append | Commit | Clear


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def parse_event(text: str | bytes, current: SessionSettings) -> ClientEvent:
    """One text frame as a client event; raises ``EventError``."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise EventError("bad_request", "the event is not JSON") from None
    if not isinstance(event, dict):
        raise EventError("bad_request", "the event is not a JSON object")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    kind = event.get("type")
    try:
        if kind in _SHAPES:
            session = event.get("session")
            if not isinstance(session, dict):
                raise EventError("bad_request", "session must be an object", "session")
            beta = kind == "transcription_session.update"
            return SessionUpdate(_beta_settings(session, current) if beta else _settings(session, current),
                                 beta)
        if kind == "input_audio_buffer.append":
            return Append(_audio(event.get("audio")))
        if kind == "input_audio_buffer.commit":
            return Commit()
        if kind == "input_audio_buffer.clear":
            return Clear()
    except EventError as error:
        error.event_id = event_id
        raise
    raise EventError("bad_request", f"unknown or unsupported event type {str(kind)[:64]!r} in a "
                     "transcription session", "type", event_id)


def binary_append(data: bytes) -> Append:
    """Our extension: a binary frame is raw s16le at the session's rate, appended as it is."""
    if len(data) % 2:
        raise EventError("invalid_audio", "a binary frame is s16le: an odd number of bytes")
    return Append(bytes(data))


def _audio(value: object) -> bytes:
    if not isinstance(value, str):
        raise EventError("invalid_audio", "audio must be a base64 string", "audio")
    try:
        pcm = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("invalid_audio", "audio is not valid base64", "audio") from None
    if len(pcm) % 2:
        raise EventError("invalid_audio", "audio/pcm is 16-bit: an odd number of bytes", "audio")
    return pcm


def _object(container: dict[str, Any], key: str, param: str) -> dict[str, Any] | None:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EventError("bad_request", f"{param} must be an object", param)
    return value


def _settings(session: dict[str, Any], current: SessionSettings) -> SessionSettings:
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise EventError("bad_request", "this server runs transcription sessions only (session.type: "
                         "\"transcription\")", "session.type")
    audio = _object(session, "audio", "session.audio") or {}
    given = _object(audio, "input", "session.audio.input") or {}
    settings = current
    if "format" in given:
        settings = replace(settings, rate=_format(given["format"], "session.audio.input.format"))
    transcription = _object(given, "transcription", "session.audio.input.transcription")
    if transcription is not None:
        settings = _transcription(transcription, settings, "session.audio.input.transcription")
    if "turn_detection" in given:
        settings = replace(settings, turn_detection=_turns(given["turn_detection"],
                                                           "session.audio.input.turn_detection"))
    return settings


def _beta_settings(session: dict[str, Any], current: SessionSettings) -> SessionSettings:
    settings = current
    if "input_audio_format" in session:
        if session["input_audio_format"] != "pcm16":
            raise EventError("bad_request", "input_audio_format must be \"pcm16\" (24 kHz s16le mono)",
                             "session.input_audio_format")
        settings = replace(settings, rate=24_000)
    transcription = _object(session, "input_audio_transcription", "session.input_audio_transcription")
    if transcription is not None:
        settings = _transcription(transcription, settings, "session.input_audio_transcription")
    if "turn_detection" in session:
        turns = _turns(session["turn_detection"], "session.turn_detection")
        settings = replace(settings, turn_detection=turns)
    return settings


def _format(value: object, param: str) -> int:
    if not isinstance(value, dict) or value.get("type") != "audio/pcm":
        raise EventError("bad_request", "the input format must be {\"type\": \"audio/pcm\", \"rate\": 24000} "
                         "(16-bit little-endian mono; 16000 also served)", param)
    rate = value.get("rate", 24_000)
    if rate not in PCM_RATES or isinstance(rate, bool):
        raise EventError("bad_request", f"audio/pcm rate must be one of {', '.join(map(str, PCM_RATES))}",
                         f"{param}.rate")
    return int(rate)


def _transcription(given: dict[str, Any], settings: SessionSettings, param: str) -> SessionSettings:
    language = given.get("language", settings.language)
    if language in ("", "auto"):
        language = None
    if language is not None:
        if not isinstance(language, str) or language.lower() not in SUPPORTED_LANGUAGES:
            raise EventError("unsupported_language", "language must be one of "
                             f"{' '.join(SUPPORTED_LANGUAGES)} or null (detect)", f"{param}.language")
        language = language.lower()
    prompt = given.get("prompt", settings.prompt)
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise EventError("bad_request", f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters",
                         f"{param}.prompt")
    model = given.get("model", settings.model)
    if not isinstance(model, str):
        raise EventError("bad_request", "model must be a string", f"{param}.model")
    return replace(settings, language=language, prompt=prompt or None, model=model)


def _turns(value: object, param: str) -> ServerVad | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        raise EventError("bad_request", "turn_detection must be null or {\"type\": \"server_vad\", ...} "
                         "(semantic_vad is not served)", param)
    defaults = ServerVad()
    threshold = value.get("threshold", defaults.threshold)
    padding = value.get("prefix_padding_ms", defaults.prefix_padding_ms)
    silence = value.get("silence_duration_ms", defaults.silence_duration_ms)
    if not _number(threshold) or not 0.0 < threshold < 1.0:
        raise EventError("bad_request", "threshold must be a number in (0, 1)", f"{param}.threshold")
    if not _number(padding) or not 0 <= padding <= 2000:
        raise EventError("bad_request", "prefix_padding_ms must be 0..2000", f"{param}.prefix_padding_ms")
    if not _number(silence) or not 100 <= silence <= 5000:
        raise EventError("bad_request", "silence_duration_ms must be 100..5000",
                         f"{param}.silence_duration_ms")
    return ServerVad(float(threshold), int(padding), int(silence))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- server events ------------------------------------------------------------------------------


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("event"), "type": kind, **fields}


def session_object(session_id: str, settings: SessionSettings, beta: bool = False) -> dict[str, Any]:
    turns = None if settings.turn_detection is None else {
        "type": "server_vad", "threshold": settings.turn_detection.threshold,
        "prefix_padding_ms": settings.turn_detection.prefix_padding_ms,
        "silence_duration_ms": settings.turn_detection.silence_duration_ms}
    transcription = {"model": settings.model, "language": settings.language, "prompt": settings.prompt or ""}
    if beta:
        return {"id": session_id, "object": "realtime.transcription_session", "input_audio_format": "pcm16",
                "input_audio_transcription": transcription, "turn_detection": turns}
    return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": settings.rate},
                                "transcription": transcription, "noise_reduction": None,
                                "turn_detection": turns}},
            "include": None}


def error_event(code: str, message: str, param: str | None = None, event_id: str | None = None,
                kind: str = "invalid_request_error") -> dict[str, Any]:
    return event("error", error={"type": kind, "code": code, "message": message, "param": param,
                                 "event_id": event_id})


def of_error(error: EventError) -> dict[str, Any]:
    return error_event(error.code, error.message, error.param, error.event_id, error.kind)


def delta(item_id: str, text: str) -> dict[str, Any]:
    return event("conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0,
                 delta=text)


def tentative(item_id: str, text: str) -> dict[str, Any]:
    return event(TENTATIVE, item_id=item_id, content_index=0, text=text)


def completed(item_id: str, transcript: str, audio_s: float, language: str) -> dict[str, Any]:
    return event("conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
                 transcript=transcript, usage={"type": "duration", "seconds": round(audio_s, 3)},
                 language=language)


def failed(item_id: str, code: str, message: str) -> dict[str, Any]:
    return event("conversation.item.input_audio_transcription.failed", item_id=item_id, content_index=0,
                 error={"type": "server_error", "code": code, "message": message, "param": None})
