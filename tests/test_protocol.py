"""The wire contract without sockets: metadata parsing, keys, frames."""

from __future__ import annotations

import json

import pytest

from asr_server.admission import KeyRing
from asr_server.contract import frames as protocol
from asr_server.contract.domain import SUPPORTED_LANGUAGES, PostprocessOutcome, Segment, Transcription, Word
from asr_server.contract.errors import ALL_ERRORS, BadRequest, UnsupportedLanguage


def meta(**fields: object) -> str:
    return json.dumps({"type": "transcribe", **fields})


def test_defaults_follow_the_spec() -> None:
    request = protocol.parse_transcribe(protocol.parse_metadata(meta()))
    assert request == protocol.TranscribeRequest(language=None, task="transcribe",
                                                 machine_id="unknown", postprocess=None)


def test_full_request_is_parsed() -> None:
    obj = protocol.parse_metadata(meta(language="bg", task="translate", machine_id="ab12",
                                       postprocess=True, api_key="k", extra={"ignored": 1}))
    request = protocol.parse_transcribe(obj)
    assert (request.language, request.task, request.machine_id, request.postprocess) == (
        "bg", "translate", "ab12", True)


@pytest.mark.parametrize("language", ["EN", " en ", "En"])
def test_language_codes_are_case_insensitive(language: str) -> None:
    assert protocol.parse_transcribe({"type": "transcribe", "language": language}).language == "en"


@pytest.mark.parametrize("language", [None, "", "auto"])
def test_detect_spellings(language: str | None) -> None:
    assert protocol.parse_transcribe({"type": "transcribe", "language": language}).language is None


@pytest.mark.parametrize("language", ["zh", "mk", "english", "xx"])
def test_unsupported_language(language: str) -> None:
    with pytest.raises(UnsupportedLanguage):
        protocol.parse_transcribe({"type": "transcribe", "language": language})


def test_all_25_languages_are_supported() -> None:
    assert len(SUPPORTED_LANGUAGES) == 25
    for code in SUPPORTED_LANGUAGES:
        assert protocol.parse_transcribe({"type": "transcribe", "language": code}).language == code


@pytest.mark.parametrize("frame", [
    b"{}",  # binary first frame
    "not json",
    "[1, 2]",
    '"transcribe"',
    json.dumps({"type": "dance"}),
    json.dumps({"language": "en"}),  # no type
    "[" * 100_000,  # deep nesting, also over 64 KiB
    json.dumps({"type": "transcribe", "pad": "x" * (64 * 1024)}),  # over 64 KiB
])
def test_bad_metadata_frames(frame: str | bytes) -> None:
    with pytest.raises(BadRequest):
        protocol.parse_metadata(frame)


def test_deep_nesting_under_the_size_limit_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        protocol.parse_metadata("[" * 60_000 + "]" * 60_000)


@pytest.mark.parametrize("fields", [
    {"language": 5}, {"task": "summarise"}, {"task": 1}, {"postprocess": "yes"}, {"postprocess": 1},
    {"word_timestamps": "true"}, {"word_timestamps": 1}, {"prompt": 5}, {"prompt": ["names"]},
    {"prompt": "x" * (protocol.MAX_PROMPT_CHARS + 1)},
])
def test_wrong_field_types(fields: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        protocol.parse_transcribe({"type": "transcribe", **fields})


def test_the_two_options_beyond_the_spec() -> None:
    plain = protocol.parse_transcribe({"type": "transcribe"})
    assert (plain.word_timestamps, plain.prompt) == (False, None)  # absent: served as the spec says
    asked = protocol.parse_transcribe({"type": "transcribe", "word_timestamps": True,
                                       "prompt": "  Dr. Petrova, Plovdiv  "})
    assert (asked.word_timestamps, asked.prompt) == (True, "Dr. Petrova, Plovdiv")
    nulls = protocol.parse_transcribe({"type": "transcribe", "word_timestamps": None, "prompt": "  "})
    assert (nulls.word_timestamps, nulls.prompt) == (False, None)


def test_words_appear_in_a_result_frame_only_when_asked_for() -> None:
    words = (Word(" Hello", 0.0, 0.4, 0.9), Word(" there.", 0.4, 0.8, 0.75))
    asked = Transcription("Hello there.", (Segment("Hello there.", 0.0, 0.8, words),), "en")
    frame = json.loads(protocol.result_frame(asked, PostprocessOutcome()))
    assert frame["segments"][0]["words"] == [
        {"word": " Hello", "start": 0.0, "end": 0.4, "probability": 0.9},
        {"word": " there.", "start": 0.4, "end": 0.8, "probability": 0.75}]
    plain = Transcription("Hello there.", (Segment("Hello there.", 0.0, 0.8),), "en")
    assert "words" not in json.loads(protocol.result_frame(plain, PostprocessOutcome()))["segments"][0]


def test_bad_machine_id_never_fails_a_request() -> None:
    assert protocol.parse_transcribe({"type": "transcribe", "machine_id": 42}).machine_id == "invalid"


def test_ping_needs_nothing_else() -> None:
    assert protocol.is_ping(protocol.parse_metadata('{"type": "ping"}'))
    assert json.loads(protocol.pong_frame()) == {"type": "pong", "status": "ok"}


def test_keyring_accepts_any_listed_key_only() -> None:
    ring = KeyRing(("old-key", "new-key"))
    assert ring.allows(protocol.api_key({"api_key": "old-key"}))
    assert ring.allows(protocol.api_key({"api_key": "new-key"}))
    for wrong in ({"api_key": "new-ke"}, {"api_key": ""}, {}, {"api_key": None}, {"api_key": ["new-key"]},
                  {"api_key": "new-key\u0000"}, {"api_key": "\udcff"}):
        assert not ring.allows(protocol.api_key(wrong))
    assert "new-key" not in repr(ring)


def test_keyring_without_keys_allows_all() -> None:
    assert KeyRing(()).allows(None) and not KeyRing(()).required


def test_result_frame_has_every_field_with_its_type() -> None:
    transcription = Transcription("Здравейте, как сте?", (Segment("Здравейте, как сте?", 0.0, 2.5),), "bg")
    frame = json.loads(protocol.result_frame(transcription, PostprocessOutcome()))
    assert frame == {
        "text": "Здравейте, как сте?",
        "segments": [{"text": "Здравейте, как сте?", "start": 0.0, "end": 2.5}],
        "language": "bg",
        "postprocessed_text": None,
        "postprocess_ms": 0.0,
        "postprocess_error": None,
    }


# Each error's close code, as the README's error table documents it (RFC 6455: 1007 invalid
# payload, 1008 policy violation, 1009 too big, 1011 internal error, 1013 try again later).
CLOSE_CODES = {
    "unauthorized": 1008, "bad_request": 1008, "unsupported_language": 1008, "timeout": 1008,
    "invalid_audio": 1007, "audio_too_long": 1009, "audio_too_large": 1009,
    "overloaded": 1013, "internal_error": 1011,
}


def test_every_error_code_is_documented() -> None:
    assert sorted(error.code for error in ALL_ERRORS) == sorted(CLOSE_CODES)


@pytest.mark.parametrize("error", ALL_ERRORS)
def test_error_frames(error: type) -> None:
    frame = json.loads(protocol.error_frame(error("why it failed")))
    assert frame == {"error": error.code, "detail": "why it failed"}
    assert error.close_code == CLOSE_CODES[error.code]
