"""Keys, transcripts and audio never reach the log, even at DEBUG, on the WebSocket and the HTTP API."""

from __future__ import annotations

import openai
import pytest

from tests.harness import EVAL_DIR, ServerProcess

from .conftest import KEYS, exchange, request


def test_debug_log_holds_no_key_and_no_transcript(server: ServerProcess) -> None:
    assert any("DEBUG" in line for line in server.lines), "the server must run at DEBUG for this test"
    wrong_key = "sekrit-wrong-key-5521"
    texts = []
    for path, language in (("en/en_whisper_jfk.wav", "en"), ("de/de_fleurs_003.wav", "de")):
        reply = exchange(server.url, request(language), (EVAL_DIR / path).read_bytes()).reply
        texts.append(reply["text"])
        texts += [seg["text"] for seg in reply["segments"]]
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=KEYS[0], max_retries=0)
    heard = api.audio.transcriptions.create(model="whisper-1", file=(EVAL_DIR / "en/en_fleurs_003.wav"),
                                            language="en", response_format="verbose_json")
    texts += [heard.text, *(segment.text for segment in heard.segments or ())]
    mark = len(server.lines)
    assert exchange(server.url, request("en", api_key=wrong_key)).reply["error"] == "unauthorized"
    server.wait_for_line("error=unauthorized", after=mark)  # this request's line, not an older one
    mark = len(server.lines)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api.base_url, api_key=wrong_key, max_retries=0).models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api.base_url, api_key=wrong_key, max_retries=0).audio.transcriptions.create(
            model="whisper-1", file=(EVAL_DIR / "en/en_whisper_jfk.wav"))
    server.wait_for_line("error=unauthorized", after=mark)
    log = "\n".join(server.lines)
    assert "status=ok" in log and "error=unauthorized" in log  # the requests were logged
    for secret in (*KEYS, wrong_key):
        assert secret not in log
    for text in texts:
        fragment = text[:24]
        assert len(fragment) >= 10 and fragment not in log, fragment


def test_live_sessions_log_no_transcript_and_no_key(server: ServerProcess) -> None:
    """The live endpoint at DEBUG: items are logged as requests, never their words; nor the key in
    the browser's subprotocol."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.live_client import load_24k, stream

    mark = len(server.lines)
    run = stream(server.http_port, load_24k(EVAL_DIR / "en/en_whisper_jfk.wav", 1.0), key=KEYS[0], pace=3.0,
                 session={"audio": {"input": {"transcription": {"language": "en"}}}})
    assert run.completed and run.text
    wrong_key = "sekrit-live-key-7731"
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{server.http_port}/v1/realtime?intent=transcription",
                subprotocols=["realtime", f"openai-insecure-api-key.{wrong_key}"])  # type: ignore[list-item]
    server.wait_for_line("status=ok", after=mark)
    log = "\n".join(server.lines[mark:])
    assert "live item" in log  # the session's DEBUG lines are there
    for secret in (*KEYS, wrong_key):
        assert secret not in log
    for item in run.completed:
        for word in item["transcript"].split():
            if len(word) > 6:
                assert word not in log, word
