"""The exchange as the spec says it, and every error code, through the real server."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import soundfile as sf
from websockets.sync.client import connect

from asr_server.contract.domain import SUPPORTED_LANGUAGES
from tests.harness import EVAL_DIR, ServerProcess, wait_until, wav_bytes

from .conftest import KEYS, STRICT_MAX_BYTES, STRICT_MAX_SECONDS, Exchange, exchange, request

JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"
GERMAN = EVAL_DIR / "de" / "de_fleurs_001.wav"


def jfk_as(subtype: str, rate: int | None = None, channels: int = 1) -> bytes:
    samples, source_rate = sf.read(JFK, dtype="float32")
    if channels > 1:
        samples = np.stack([samples] * channels, axis=1)
    if rate and rate != source_rate:
        import soxr

        samples = soxr.resample(samples, source_rate, rate)
    return wav_bytes(samples, rate or source_rate, subtype)


def test_result_has_every_field_with_its_type(server: ServerProcess) -> None:
    result = exchange(server.url, request("en"), JFK.read_bytes())
    reply = result.reply
    assert set(reply) == {"text", "segments", "language", "postprocessed_text", "postprocess_ms",
                          "postprocess_error"}
    assert isinstance(reply["text"], str) and "ask not what your country" in reply["text"].lower()
    assert reply["language"] == "en"
    assert reply["postprocessed_text"] is None and reply["postprocess_error"] is None
    assert reply["postprocess_ms"] == 0
    assert reply["segments"] and all(set(s) == {"text", "start", "end"} for s in reply["segments"])
    for seg in reply["segments"]:
        assert isinstance(seg["start"], float) and isinstance(seg["end"], float)
        assert 0 <= seg["start"] <= seg["end"] <= 11.0
    assert result.close_code == 1000


def test_back_to_back_frames_and_every_format(server: ServerProcess) -> None:
    for wav in (jfk_as("FLOAT"), jfk_as("PCM_U8"), jfk_as("PCM_24", 48_000, channels=2),
                jfk_as("DOUBLE", 8_000)):
        reply = exchange(server.url, request("en"), wav).reply
        assert "what you can do for your country" in reply["text"].lower(), reply


def test_translate_gives_english_and_the_source_language(server: ServerProcess) -> None:
    reply = exchange(server.url, request("de", task="translate"), GERMAN.read_bytes()).reply
    assert reply["language"] == "de"
    words = set(reply["text"].lower().replace(",", " ").replace(".", " ").split())
    assert words & {"the", "and", "is", "of", "a", "to", "in", "it"}, reply["text"]


def test_null_language_is_detected(server: ServerProcess) -> None:
    assert exchange(server.url, request(None), JFK.read_bytes()).reply["language"] == "en"
    reply = exchange(server.url, request(None), GERMAN.read_bytes()).reply
    assert reply["language"] == "de" and reply["language"] in SUPPORTED_LANGUAGES


def test_ping_needs_no_key_and_closes_normally(server: ServerProcess) -> None:
    result = exchange(server.url, {"type": "ping"})
    assert result.reply == {"type": "pong", "status": "ok"} and result.close_code == 1000


def test_health_and_unknown_paths(server: ServerProcess) -> None:
    assert server.health() == (200, {"status": "ok", "postprocess_enabled": False})
    for path in ("/metrics", "/ws", "/health/x", "/../etc/passwd"):  # "/" is the page: test_page.py
        assert server.http_get(path)[0] == 404, path
    assert server.health()[0] == 200


def test_either_rotated_key_works(server: ServerProcess) -> None:
    for key in KEYS:
        reply = exchange(server.url, request("en", api_key=key), JFK.read_bytes()).reply
        assert "country" in reply["text"]


def test_unauthorized_before_any_audio_is_read(server: ServerProcess) -> None:
    for metadata in (request("en", api_key="sekrit-guess-42"), request("en", api_key=None),
                     {"type": "transcribe", "language": "en"}, request("xx", api_key=KEYS[0] + "x")):
        with connect(server.url) as ws:
            ws.send(json.dumps(metadata))  # and no audio: the answer must not wait for it
            reply = json.loads(ws.recv(timeout=5))
            assert reply["error"] == "unauthorized"
            assert "sekrit" not in reply["detail"] and KEYS[0] not in reply["detail"]
        assert ws.close_code == 1008


def test_bad_request(server: ServerProcess) -> None:
    cases = [
        (b"RIFF....WAVE",),  # binary first
        ("{not json",),
        ({"type": "stream"},),
        ({"language": "en", "api_key": KEYS[0]},),  # no type
        (request("en", task="summarise"), JFK.read_bytes()),
        (request("en", postprocess="yes"), JFK.read_bytes()),
        (request("en"), "second frame as text"),
        (json.dumps({"type": "transcribe", "pad": "x" * 70_000}),),
    ]
    for frames in cases:
        result = exchange(server.url, *frames)
        assert result.reply["error"] == "bad_request", frames[0]
        assert result.reply["detail"] and result.close_code == 1008


def test_unsupported_language(server: ServerProcess) -> None:
    result = exchange(server.url, request("mk"), JFK.read_bytes())
    assert result.reply["error"] == "unsupported_language" and "bg" in result.reply["detail"]
    assert result.close_code == 1008


def test_invalid_audio(server: ServerProcess) -> None:
    silence_33ch = wav_bytes(np.zeros((1600, 33), dtype=np.float32), 16_000)
    nan = wav_bytes(np.full(1600, np.nan, dtype=np.float32), 16_000, "FLOAT")
    for data, reason in ((b"not audio at all", "WAV"),
                         (wav_bytes(np.zeros(0, dtype=np.float32), 16_000), "no samples"),
                         (silence_33ch, "channels"), (nan, "NaN"),
                         (b"OggS" + bytes(200), "Ogg")):
        result = exchange(server.url, request("en"), data)
        assert result.reply["error"] == "invalid_audio" and reason in result.reply["detail"], result.reply
        assert result.close_code == 1007


def test_audio_too_long(strict_server: ServerProcess) -> None:
    samples = np.zeros(16_000 * (STRICT_MAX_SECONDS + 1), dtype=np.int16)
    result = exchange(strict_server.url, request("en"), wav_bytes(samples, 16_000))
    assert result.reply["error"] == "audio_too_long" and result.close_code == 1009


def test_audio_too_large_is_closed_by_the_library_with_1009(strict_server: ServerProcess) -> None:
    result = exchange(strict_server.url, request("en"), bytes(STRICT_MAX_BYTES + 1))
    assert result.replies == [] and result.close_code == 1009
    assert strict_server.health()[0] == 200


def test_timeouts(strict_server: ServerProcess) -> None:
    silent = exchange(strict_server.url)  # connects, sends nothing
    assert silent.reply["error"] == "timeout" and "metadata" in silent.reply["detail"]
    no_audio = exchange(strict_server.url, request("en"))
    assert no_audio.reply["error"] == "timeout" and "audio" in no_audio.reply["detail"]
    assert no_audio.close_code == 1008


def test_overloaded_when_the_queue_is_full(strict_server: ServerProcess) -> None:
    """Queue of one, one request at a time: one runs, one waits, the next is refused at once."""
    samples, rate = sf.read(EVAL_DIR / "en" / "en_fleurs_002.wav", dtype="float32")
    # 19 s of speech, just under the strict limit: the running request outlasts the steps below.
    wav = wav_bytes(np.concatenate([samples, samples])[: rate * (STRICT_MAX_SECONDS - 1)], rate)
    results: dict[str, Exchange] = {}

    def client(name: str) -> threading.Thread:
        def run() -> None:
            results[name] = exchange(strict_server.url, request("en"), wav)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # ASR_MAX_BATCH=1: each request on the worker is one batch of one, counted as it starts.
    batches = strict_server.metric("asr_batch_size_count")
    running = client("running")
    wait_until(lambda: strict_server.metric("asr_batch_size_count") > batches, 60,
               "the first request on the worker")
    waiting = client("waiting")
    wait_until(lambda: strict_server.metric("asr_queue_depth") == 1, 60, "the second request in the queue")
    refused = exchange(strict_server.url, request("en"), wav)
    assert refused.reply["error"] == "overloaded" and set(refused.reply) == {"error", "detail"}
    assert "already waiting" in refused.reply["detail"], refused.reply
    assert refused.close_code == 1013, (refused.close_code, refused.close_reason)
    for thread in (running, waiting):
        thread.join(300)
    for name in ("running", "waiting"):
        assert "romantic" in results[name].reply["text"], (name, results[name].reply)
        assert results[name].close_code == 1000, name
    assert exchange(strict_server.url, {"type": "ping"}).reply["type"] == "pong"


def test_unknown_fields_are_ignored(server: ServerProcess) -> None:
    reply = exchange(server.url, request("en", future_field={"x": 1}, client="v2"), JFK.read_bytes()).reply
    assert "country" in reply["text"]


def test_python_client_default_wav_from_float_array(server: ServerProcess) -> None:
    samples, rate = sf.read(JFK, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV")  # PCM_16 by default, as the spec notes
    assert "country" in exchange(server.url, request("en"), buf.getvalue()).reply["text"]


def test_permessage_deflate_is_refused(server: ServerProcess) -> None:
    with connect(server.url, compression="deflate") as ws:  # the client offers it
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "pong"
