"""The HTTP API's fields and bodies without a socket: parse_form's judgements and render's formats."""

from __future__ import annotations

import json

import pytest

from asr_server.contract.domain import PostprocessOutcome, Segment, Transcription, Word
from asr_server.contract.errors import BadRequest, UnsupportedLanguage
from asr_server.contract.openai_formats import FieldError, FormRequest, parse_form, render
from asr_server.engine.transcribe_state import TEMPERATURES, temperature_schedule

SPOKEN = Transcription(
    text="Hello there. General Kenobi.",
    segments=(Segment("Hello there.", 0.0, 1.5, (Word(" Hello", 0.0, 0.6, 0.9),
                                                 Word(" there.", 0.6, 1.5, 0.8))),
              Segment("General Kenobi.", 2.0, 3661.25, (Word(" General", 2.0, 2.5, 0.7),
                                                        Word(" Kenobi.", 2.5, 3661.25, 0.6)))),
    language="en")
CORRECTED = PostprocessOutcome(text="Hello there, General Kenobi.", ms=12.0, called=True)


def test_defaults_are_openais() -> None:
    form = parse_form([("model", "whisper-1")], "transcribe")
    assert form == FormRequest(model="whisper-1")


def test_fields_as_the_openai_client_sends_them() -> None:
    form = parse_form([("language", "BG"), ("prompt", " Пловдив "), ("response_format", "verbose_json"),
                       ("temperature", "0.3"), ("timestamp_granularities[]", "word"),
                       ("timestamp_granularities[]", "segment"), ("postprocess", "false"),
                       ("unknown_field", "ignored")], "transcribe")
    assert (form.language, form.prompt, form.response_format, form.temperature) == ("bg", "Пловдив",
                                                                                  "verbose_json", 0.3)
    assert form.granularities == {"word", "segment"} and form.postprocess is False


@pytest.mark.parametrize("fields, param", [
    ([("response_format", "docx")], "response_format"),
    ([("temperature", "hot")], "temperature"),
    ([("temperature", "nan")], "temperature"),
    ([("temperature", "-0.1")], "temperature"),
    ([("timestamp_granularities[]", "char")], "timestamp_granularities"),
    ([("stream", "maybe")], "stream"),
    ([("stream", "true"), ("response_format", "srt")], "stream"),
    ([("prompt", "x" * 2001)], "prompt"),
])
def test_each_wrong_field_is_named(fields: list[tuple[str, str]], param: str) -> None:
    with pytest.raises(FieldError) as refused:
        parse_form(fields, "transcribe")
    assert refused.value.param == param and refused.value.code == "bad_request"


def test_languages_are_the_websockets_and_translation_ignores_one() -> None:
    with pytest.raises(UnsupportedLanguage):
        parse_form([("language", "tlh")], "transcribe")
    assert parse_form([("language", "auto")], "transcribe").language is None
    assert parse_form([("language", "tlh")], "translate").language is None  # OpenAI's takes none
    with pytest.raises(BadRequest):
        parse_form([("language", "en"), ("stream", "2")], "transcribe")


def test_json_and_text_carry_the_best_text() -> None:
    form = FormRequest()
    assert render(form, SPOKEN, PostprocessOutcome(), 3661.3) == (
        "application/json", json.dumps({"text": SPOKEN.text, "usage": {"type": "duration", "seconds": 3662}}))
    assert json.loads(render(form, SPOKEN, CORRECTED, 5)[1])["text"] == CORRECTED.text
    assert render(FormRequest(response_format="text"), SPOKEN, CORRECTED, 5) == ("text/plain",
                                                                                CORRECTED.text + "\n")


def test_subtitles_keep_whispers_timed_text() -> None:
    content_type, body = render(FormRequest(response_format="srt"), SPOKEN, CORRECTED, 5)
    assert content_type == "text/plain" and body == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:00:02,000 --> 01:01:01,250\nGeneral Kenobi.\n\n")
    content_type, body = render(FormRequest(response_format="vtt"), SPOKEN, CORRECTED, 5)
    assert content_type == "text/vtt" and body == (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "2\n00:00:02.000 --> 01:01:01.250\nGeneral Kenobi.\n\n")


def test_verbose_json_by_granularity() -> None:
    form = FormRequest(response_format="verbose_json", granularities=frozenset({"word", "segment"}))
    both = json.loads(render(form, SPOKEN, CORRECTED, 3.25)[1])
    assert both["language"] == "english" and both["duration"] == 3.25 and both["text"] == SPOKEN.text
    assert both["segments"][1] == {"id": 1, "start": 2.0, "end": 3661.25, "text": "General Kenobi."}
    assert [w["word"] for w in both["words"]] == ["Hello", "there.", "General", "Kenobi."]
    assert (both["postprocessed_text"], both["postprocess_ms"]) == (CORRECTED.text, 12.0)
    words_only = json.loads(render(FormRequest(response_format="verbose_json",
                                               granularities=frozenset({"word"})), SPOKEN, CORRECTED, 3)[1])
    assert "segments" not in words_only and len(words_only["words"]) == 4


def test_temperature_starts_the_fallback_schedule() -> None:
    assert temperature_schedule(0.0) == TEMPERATURES
    assert temperature_schedule(0.3) == (0.3, 0.4, 0.6, 0.8, 1.0)
    assert temperature_schedule(1.0) == (1.0,)
