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
