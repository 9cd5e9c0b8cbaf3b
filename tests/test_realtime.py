"""Live dictation: the official openai client's realtime connection against the real server.

Real recordings streamed at real-time pace through ``client.realtime.connect(...,
extra_query={"intent": "transcription"})`` (tests/live_client.py), the
session's greedy server with two keys; the session cap on the strict server
(one live session). What each test reads is what a client sees: the events,
their order and times, and the metrics on the sidecar.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests import harness
from tests.conftest import KEY
from tests.harness import EVAL_DIR, ServerProcess
from tests.live_client import RATE, LiveRun, joined, load_24k, pcm16, stream

JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for " \
           "your country."
ENGLISH = {"audio": {"input": {"transcription": {"language": "en"}}}}
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def check_items(run: LiveRun) -> None:
    """Every item's transcript is its deltas joined, and the openai client parsed every event."""
    assert run.error is None, run.error
    for item in run.completed:
        assert item["transcript"] == "".join(run.deltas(item["item_id"])), item


def test_a_clip_streamed_live_gives_deltas_before_it_ends(server: ServerProcess) -> None:
    counted = 'asr_requests_total{machine_id="ab12cd",status="ok",task="transcribe"}'
    before = server.metric(counted)
    run = stream(server.http_port, load_24k(JFK, 1.0), key=KEY, session=ENGLISH,
                 headers={"X-Machine-Id": "ab12cd"})
    check_items(run)
    speech_ends = load_24k(JFK).size / RATE
    first_delta = run.of(DELTA)[0][0]
    assert first_delta < speech_ends, "the first final words come while the speaker still speaks"
    assert harness.wer([JFK_TEXT], [run.text], "en") <= 25.0, run.text
    assert [e["type"] for _, e in run.events[:2]] == ["session.created", "session.updated"]
    tentative = [e for _, e in run.of("conversation.item.input_audio_transcription.tentative")]
    assert tentative, "the revisable tail is shown while the item is open"
    # Each item counts as one request in the spec's metrics, and the session is gone afterwards.
    harness.wait_until(lambda: server.metric(counted) >= before + len(run.completed), 10, "items counted")
    harness.wait_until(lambda: server.metric("asr_live_sessions") == 0, 10, "the session closed")
    assert server.metric("asr_live_final_latency_seconds_count") >= len(run.completed)


def test_two_utterances_with_a_pause_are_two_items(server: ServerProcess) -> None:
    clips = [EVAL_DIR / "en" / "en_whisper_jfk.wav", EVAL_DIR / "de" / sorted(
        p.name for p in (EVAL_DIR / "de").glob("*.wav"))[0]]
    session = {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 1200}}}}
    run = stream(server.http_port, joined(clips, 2.0), key=KEY, session=session)
    check_items(run)
    texts = [item["transcript"] for item in run.completed]
    assert len(texts) == 2 and all(texts), texts
    assert [item["language"] for item in run.completed] == ["en", "de"]
    stopped = [e["audio_end_ms"] for _, e in run.of("input_audio_buffer.speech_stopped")]
    assert stopped[0] < load_24k(clips[0]).size / RATE * 1000 + 2000 < stopped[1]


def test_a_long_turns_last_decode_starts_past_its_committed_words(server: ServerProcess) -> None:
    """Over 10 s of speech in one turn: at its pauses the buffer is cut past the committed words."""
    clips = [c for c in harness.load_manifest() if c.path.name in ("en_whisper_jfk.wav", "en_fleurs_000.wav")]
    session = {"audio": {"input": {"transcription": {"language": "en"},
                                   "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500}}}}
    after = len(server.lines)
    run = stream(server.http_port, joined([c.path for c in clips], 0.4), key=KEY, session=session)
    check_items(run)
    assert len(run.completed) == 1 and not run.of("conversation.item.input_audio_transcription.failed")
    server.wait_for_line("the turn's last decode cut", after=after)
    assert harness.wer([" ".join(c.text for c in clips)], [run.text], "en") <= 25.0, run.text


def test_a_long_unbroken_turns_last_decode_forces_its_committed_words(server: ServerProcess) -> None:
    """22 s of read prose in one turn, its segments too long to cut at: the last decode is given the
    committed words as its start and decodes only what follows them."""
    clip = next(c for c in harness.load_manifest() if c.path.name.startswith("en_ljspeech"))
    first = [segment for segment in clip.row["segments"] if segment["end"] < 22.0]
    session = {"audio": {"input": {"transcription": {"language": "en"},
                                   "turn_detection": {"type": "server_vad", "silence_duration_ms": 1500}}}}
    after = len(server.lines)
    speech = load_24k(clip.path)[: int((first[-1]["end"] + 0.3) * RATE)]
    run = stream(server.http_port, np.concatenate([speech, np.zeros(2 * RATE, dtype=speech.dtype)]), key=KEY,
                 session=session)
    check_items(run)
    assert len(run.completed) == 1 and not run.of("conversation.item.input_audio_transcription.failed")
    server.wait_for_line("the turn's last decode forces", after=after)
    assert harness.wer([" ".join(s["text"] for s in first)], [run.text], "en") <= 15.0, run.text


def test_manual_commit_without_turn_detection(server: ServerProcess) -> None:
    session = {**ENGLISH["audio"]["input"], "turn_detection": None}
    run = stream(server.http_port, load_24k(JFK), key=KEY, pace=4.0, commit=True,
                 session={"audio": {"input": session}})
    check_items(run)
    assert not run.of("input_audio_buffer.speech_started"), "no server VAD turns"
    assert len(run.of("input_audio_buffer.committed")) == 1 and len(run.completed) == 1
    assert harness.wer([JFK_TEXT], [run.completed[0]["transcript"]], "en") <= 25.0


def test_silence_and_noise_give_no_text(server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    seconds = 20 * RATE
    hum = 0.05 * np.sin(2 * np.pi * 50 * np.arange(seconds) / RATE)
    audio = np.concatenate([np.zeros(seconds), 0.03 * rng.standard_normal(seconds), hum]).astype(np.float32)
    run = stream(server.http_port, audio, key=KEY, pace=6.0, session=ENGLISH, settle_s=5.0)
    assert run.error is None, run.error
    assert not run.of(DELTA) and not any(item["transcript"] for item in run.completed), run.events


def test_a_wrong_key_is_refused_before_the_upgrade(server: ServerProcess) -> None:
    client = OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(InvalidStatus) as refused:
        with client.realtime.connect(extra_query={"intent": "transcription"}):
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "unauthorized"
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="asr-server"'


def test_browser_subprotocol_key_and_binary_frames(server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{server.http_port}/v1/realtime?intent=transcription"
    with pytest.raises(InvalidStatus):
        connect(url, subprotocols=["realtime", "openai-insecure-api-key.wrong"])  # type: ignore[list-item]
    with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"],  # type: ignore[list-item]
                 max_size=None) as ws:
        assert ws.subprotocol == "realtime"  # the key is never echoed
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        given = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None,
                 "transcription": {"language": "en"}}
        ws.send(json.dumps({"type": "session.update",
                            "session": {"type": "transcription", "audio": {"input": given}}}))
        assert json.loads(ws.recv(timeout=30))["session"]["audio"]["input"]["format"]["rate"] == 16000
        data = pcm16(_sixteen(JFK))
        for i in range(0, len(data), 32_000):
            ws.send(data[i:i + 32_000])  # raw s16le at the session's rate, no base64
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = _until(ws, COMPLETED)
        assert harness.wer([JFK_TEXT], [events[-1]["transcript"]], "en") <= 25.0


def _sixteen(path: Any) -> np.ndarray:
    import soundfile as sf
    import soxr

    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return soxr.resample(samples.mean(axis=1), rate, 16_000).astype(np.float32)


def _until(ws: Any, kind: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        event = json.loads(ws.recv(timeout=60))
        seen.append(event)
        if event["type"] == kind:
            return seen


def test_bad_events_get_errors_and_the_session_goes_on(server: ServerProcess) -> None:
    def bad_events(conn: Any) -> None:
        conn.send({"type": "response.create", "event_id": "evt_unknown"})
        conn.input_audio_buffer.append(audio="not base64 at all!")
        conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcmu"}}}}})
        conn.input_audio_buffer.commit()  # nothing buffered yet

    run = stream(server.http_port, load_24k(JFK), key=KEY, pace=4.0, commit=True, before=bad_events,
                 session={"audio": {"input": {**ENGLISH["audio"]["input"], "turn_detection": None}}})
    errors = [e["error"] for _, e in run.of("error")]
    assert [(e["code"], e["param"]) for e in errors] == [
        ("bad_request", "type"), ("invalid_audio", "audio"), ("bad_request", "session.audio.input.format"),
        ("bad_request", None)], errors
    assert errors[0]["event_id"] == "evt_unknown"
    check_items(run)  # and the session went on: the audio after the errors was transcribed
    assert harness.wer([JFK_TEXT], [run.text], "en") <= 25.0


def test_the_session_cap_answers_overloaded(strict_server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{strict_server.http_port}/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {KEY}"}
    with connect(url, additional_headers=headers) as first:
        assert json.loads(first.recv(timeout=30))["type"] == "session.created"
        with connect(url, additional_headers=headers) as second:
            refusal = json.loads(second.recv(timeout=30))
            assert refusal["type"] == "error" and refusal["error"]["code"] == "overloaded"
            with pytest.raises(ConnectionClosed):
                second.recv(timeout=30)
            assert second.close_code == 1013
        first.send(json.dumps({"type": "input_audio_buffer.append",
                               "audio": base64.b64encode(b"\0\0" * 2400).decode()}))
        first.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(first.recv(timeout=30))["type"] == "input_audio_buffer.cleared"  # served on


def test_audio_sent_far_faster_than_real_time_is_bounded(server: ServerProcess) -> None:
    """A client that sends audio much faster than it can be transcribed: the session holds at most
    twice LIVE_MAX_BUFFER_S of it, then says so and closes (1013); the server serves on."""
    flood = np.concatenate([load_24k(JFK, 1.0)] * 8)  # 96 s of speech and pauses, sent in about 2 s
    run = stream(server.http_port, flood, key=KEY, pace=50.0, session=ENGLISH, settle_s=20.0)
    errors = [e["error"] for _, e in run.of("error")]
    assert errors and errors[-1]["code"] == "overloaded" and "real time" in errors[-1]["message"], errors
    assert isinstance(run.error, Exception)  # the session was closed
    again = stream(server.http_port, load_24k(JFK, 1.0), key=KEY, pace=3.0, session=ENGLISH)
    check_items(again)
    assert again.completed
