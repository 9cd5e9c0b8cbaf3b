"""The HTTP API's contract without I/O: the form's fields in, OpenAI's response bodies out.

``parse_form`` judges the multipart text fields as OpenAI's audio API names
them (``model``, ``language``, ``prompt``, ``response_format``,
``temperature``, ``timestamp_granularities[]``, ``stream``, and our
``postprocess``); ``render`` writes json, text, srt, vtt or verbose_json;
``error_body`` gives an error's HTTP status and OpenAI's error object.

What each format carries:
- ``json`` and ``text``: the best text, the LLM's correction when there is one
  (as the spec's clients print ``postprocessed_text or text``);
- ``verbose_json``: whisper's text, the language's name, the duration, the
  segments (``segment`` granularity, the default) and the words (``word``),
  plus our ``postprocessed_text``, ``postprocess_ms`` and ``postprocess_error``;
- ``srt`` and ``vtt``: the segments as subtitles (never post-processed: an
  LLM's rewrite has no times).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pysubs2

from asr_server.contract.domain import LANGUAGE_NAMES, PostprocessOutcome, Segment, Transcription
from asr_server.contract.errors import AsrError, BadRequest
from asr_server.contract.frames import MAX_PROMPT_CHARS, parse_transcribe

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SUBTITLE_TYPES = {"srt": "text/plain", "vtt": "text/vtt"}
GRANULARITIES = ("word", "segment")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


class FieldError(BadRequest):
    """A form field that is wrong; ``param`` names it, as OpenAI's errors do."""

    def __init__(self, detail: str, param: str | None) -> None:
        super().__init__(detail)
        self.param = param


@dataclass(frozen=True)
class FormRequest:
    """A validated transcription or translation form."""

    task: str = "transcribe"
    model: str = ""
    language: str | None = None  # None: detect
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    granularities: frozenset[str] = frozenset({"segment"})
    stream: bool = False
    postprocess: bool | None = None  # None: the server's default


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise FieldError(f"{name!r} must be true or false", name)


def parse_form(fields: list[tuple[str, str]], task: str) -> FormRequest:
    """The form's text fields (the file is read apart); unknown fields are ignored, as OpenAI does."""
    single: dict[str, str] = {}
    granularities: set[str] = set()
    for name, value in fields:
        if name in ("timestamp_granularities[]", "timestamp_granularities"):
            if value not in GRANULARITIES:
                raise FieldError("timestamp_granularities[] must be word or segment",
                                 "timestamp_granularities")
            granularities.add(value)
        else:
            single[name] = value
    response_format = single.get("response_format", "json").strip() or "json"
    if response_format not in RESPONSE_FORMATS:
        raise FieldError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "response_format")
    try:
        temperature = float(single.get("temperature", "0") or 0)
    except ValueError:
        raise FieldError("temperature must be a number from 0 to 1", "temperature") from None
    if not 0.0 <= temperature <= 1.0:  # also NaN
        raise FieldError("temperature must be a number from 0 to 1", "temperature")
    if task == "translate" and "language" in single:
        single.pop("language")  # OpenAI's translations take no language: the source is detected
    prompt = single.get("prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise FieldError(f"prompt is longer than {MAX_PROMPT_CHARS} characters", "prompt")
    # Language and prompt are judged as the WebSocket metadata's are, with the same messages.
    request = parse_transcribe({"language": single.get("language"), "prompt": prompt, "task": task})
    stream = _flag("stream", single["stream"]) if "stream" in single else False
    if stream and response_format not in ("json", "text"):
        raise FieldError("stream=true sends text events: use response_format json or text", "stream")
    postprocess = _flag("postprocess", single["postprocess"]) if "postprocess" in single else None
    return FormRequest(task=task, model=single.get("model", ""), language=request.language,
                       prompt=request.prompt, response_format=response_format, temperature=temperature,
                       granularities=frozenset(granularities or {"segment"}), stream=stream,
                       postprocess=postprocess)


_STATUS = {"unauthorized": 401, "bad_request": 400, "unsupported_language": 400, "invalid_audio": 400,
           "audio_too_large": 413, "audio_too_long": 413, "timeout": 400, "overloaded": 429,
           "internal_error": 503}
_TYPE = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error",
         429: "rate_limit_error", 503: "server_error"}
_PARAM = {"unsupported_language": "language", "invalid_audio": "file", "audio_too_large": "file",
          "audio_too_long": "file"}


def error_body(error: AsrError) -> tuple[int, dict[str, Any]]:
    status = _STATUS.get(error.code, 503)
    param = error.param if isinstance(error, FieldError) else _PARAM.get(error.code)
    return status, {"error": {"message": error.detail, "type": _TYPE[status], "param": param,
                              "code": error.code}}


def error_headers(status: int) -> dict[str, str] | None:
    """The headers OpenAI's clients read beside an error: when to retry, or how to authenticate."""
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="asr-server"'}
    return {"Retry-After": "1"} if status in (429, 503) else None


def _words(segments: tuple[Segment, ...]) -> list[dict[str, Any]]:
    return [{"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in segments for w in (s.words or ())]


def verbose_json(form: FormRequest, transcription: Transcription, corrected: PostprocessOutcome,
                 duration_s: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": form.task,
        "language": LANGUAGE_NAMES.get(transcription.language, transcription.language),
        "duration": round(duration_s, 3),
        "text": transcription.text,
    }
    if "segment" in form.granularities:
        body["segments"] = [{"id": i, "start": s.start, "end": s.end, "text": s.text}
                            for i, s in enumerate(transcription.segments)]
    if "word" in form.granularities:
        body["words"] = _words(transcription.segments)
    body.update({"postprocessed_text": corrected.text, "postprocess_ms": corrected.ms,
                 "postprocess_error": corrected.error, "usage": _usage(duration_s)})
    return body


def _usage(duration_s: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration_s)}


def render(form: FormRequest, transcription: Transcription, corrected: PostprocessOutcome,
           duration_s: float) -> tuple[str, str]:
    """The response's content type and body for ``form.response_format``."""
    best = corrected.text or transcription.text
    if form.response_format == "text":
        return "text/plain", best + "\n"
    if form.response_format in ("srt", "vtt"):
        return SUBTITLE_TYPES[form.response_format], _subtitles(transcription.segments, form.response_format)
    if form.response_format == "verbose_json":
        body = verbose_json(form, transcription, corrected, duration_s)
    else:
        body = {"text": best, "usage": _usage(duration_s)}
    return "application/json", json.dumps(body, ensure_ascii=False)


def _subtitles(segments: tuple[Segment, ...], fmt: str) -> str:
    """SubRip or WebVTT by pysubs2, as the asr-client writes them: one line per cue, empty cues left out."""
    cues = pysubs2.SSAFile()
    for segment in segments:
        cue = pysubs2.SSAEvent(start=max(0, round(segment.start * 1000)),
                               end=max(0, round(segment.end * 1000)))
        cue.plaintext = " ".join(segment.text.split())  # a blank line would end the cue
        if cue.plaintext:
            cues.append(cue)
    return str(cues.to_string(fmt))
