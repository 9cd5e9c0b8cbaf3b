"""The OpenAI-compatible HTTP API, driven by the official ``openai`` client against the real server.

Every response format, word and segment granularity, compressed uploads,
translation, streaming, the error shapes (401, 400, 413) and the spec's
metrics, on the session's greedy server (and the strict one for the size
limit). The WebSocket path is the other tests'; nothing here changes it.
"""

from __future__ import annotations

import io
import json
import re
import select
import socket
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf

from tests import harness
from tests.codecs import encode
from tests.conftest import KEY, STRICT_MAX_BYTES
from tests.harness import ServerProcess

CLIP = "en/en_picovoice_test.wav"
REFERENCE = "Mr. Quilter is the apostle of the middle classes and we are glad to welcome his gospel."
DURATION_S = 5.855
MACHINE = "4774700a0000000000000000000000000000000000000000000000000000beef"
_CUE_TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"


def client(server: ServerProcess, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=key, max_retries=0,
                         timeout=300, default_headers={"X-Machine-Id": MACHINE})


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, int]:
    samples, rate = sf.read(harness.EVAL_DIR / CLIP, dtype="float32")
    return samples, rate


def wav_upload() -> tuple[str, bytes, str]:
    """The clip's WAV as the openai client uploads a file: name, bytes, content type."""
    return "clip.wav", (harness.EVAL_DIR / CLIP).read_bytes(), "audio/wav"


def upload(clip: tuple[np.ndarray, int], codec: str) -> tuple[str, bytes, str]:
    """The clip encoded with ``codec`` (tests/codecs.py), as an upload."""
    extension = {"ogg-opus": "ogg", "ogg-vorbis": "ogg"}.get(codec, codec)
    return f"clip.{extension}", encode(*clip, codec), f"audio/{extension}"


def cue_times(body: str) -> list[tuple[float, float]]:
    times = []
    for match in re.finditer(rf"{_CUE_TIME} --> {_CUE_TIME}", body):
        h1, m1, s1, f1, h2, m2, s2, f2 = (int(g) for g in match.groups())
        times.append((h1 * 3600 + m1 * 60 + s1 + f1 / 1000, h2 * 3600 + m2 * 60 + s2 + f2 / 1000))
    return times


@pytest.mark.parametrize("response_format, codec", [
    ("json", "flac"), ("text", "mp3"), ("srt", "ogg-opus"), ("vtt", "m4a"), ("verbose_json", "webm"),
])
def test_each_format_from_each_container(server: ServerProcess, clip: tuple[np.ndarray, int],
                                         response_format: str, codec: str) -> None:
    granularities: Any = ["word", "segment"] if response_format == "verbose_json" else openai.omit
    before = server.metric(f'asr_requests_total{{machine_id="{MACHINE}",status="ok",task="transcribe"}}')
    result: Any = client(server).audio.transcriptions.create(
        model="whisper-1", file=upload(clip, codec), language="en", response_format=response_format,
        timestamp_granularities=granularities)
    if response_format == "json":
        text = result.text
        assert result.usage.seconds == 6
    elif response_format == "text":
        assert isinstance(result, str) and result.endswith("\n")
        text = result
    elif response_format in ("srt", "vtt"):
        assert isinstance(result, str)
        assert result.startswith("WEBVTT\n\n") == (response_format == "vtt")
        if response_format == "srt":
            assert result.startswith("1\n00:00:00,")
        times = cue_times(result)
        assert times and all(0 <= start < end <= DURATION_S + 0.1 for start, end in times), times
        assert times == sorted(times)
        text = " ".join(line for line in result.splitlines()
                        if line and "-->" not in line and not line.isdigit() and line != "WEBVTT")
    else:
        assert result.task == "transcribe" and result.language == "english"
        assert abs(result.duration - DURATION_S) < 0.15
        assert result.segments and result.words
        for segment in result.segments:
            inside = [w for w in result.words if segment.start <= w.start and w.end <= segment.end]
            assert inside, (segment, result.words)
        # Words come stripped, as OpenAI's do ("ill" and "-disposed" are two): they spell the text.
        assert "".join(w.word for w in result.words) == result.text.replace(" ", "")
        assert [w.start for w in result.words] == sorted(w.start for w in result.words)
        text = result.text
    assert harness.wer([REFERENCE], [text], "en") < 15, text
    harness.wait_until(lambda: server.metric(
        f'asr_requests_total{{machine_id="{MACHINE}",status="ok",task="transcribe"}}') == before + 1,
        10, "the request counted under the X-Machine-Id label")


def test_segment_granularity_alone_has_no_words(server: ServerProcess) -> None:
    result = client(server).audio.transcriptions.create(
        model="whisper-1", file=wav_upload(), language="en",
        response_format="verbose_json", timestamp_granularities=["segment"])
    assert result.segments and result.words is None
    assert result.segments[0].start == 0.0 and "apostle" in result.segments[0].text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the openai client's mark on translations
def test_translation_into_english(server: ServerProcess) -> None:
    german = harness.EVAL_DIR / "de/de_fleurs_005.wav"  # "dieses sediment war nötig um sandbänke ..."
    result = client(server).audio.translations.create(
        model="whisper-1", file=("de.wav", german.read_bytes(), "audio/wav"), response_format="verbose_json")
    assert result.task == "translate" and result.language == "german"  # the language heard
    words = set(harness.normalise(result.text, "en").split())
    assert {"sediment", "necessary"} <= words, result.text
    assert not words & {"dieses", "war", "nötig", "um", "sandbänke", "zu", "bilden"}, result.text


JFK = ("And so my fellow Americans, ask not what your country can do for you, "
       "ask what you can do for your country.")


def two_windows() -> bytes:
    """JFK, 20 s of silence, JFK: the loop settles the first window (seek moves to its last
    segment's end, 11 s in), then the second."""
    jfk, rate = sf.read(harness.EVAL_DIR / "en/en_whisper_jfk.wav", dtype="float32")
    pause = np.zeros(int(rate * 20), dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([jfk, pause, jfk]), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_streaming_sends_each_window_as_it_becomes_final(server: ServerProcess) -> None:
    api = client(server)
    stream_machine = "4774700a00000000000000000000000000000000000000000000000000005ee5"
    counted = f'asr_requests_total{{machine_id="{stream_machine}",status="ok",task="transcribe"}}'
    before = server.metric(counted)
    events = api.audio.transcriptions.create(
        model="whisper-1", file=("jfk2.wav", two_windows(), "audio/wav"), language="en", stream=True,
        extra_headers={"X-Machine-Id": stream_machine})
    deltas: list[str] = []
    done: Any = None
    in_flight_at_first_delta = None
    for event in events:
        if event.type == "transcript.text.delta":
            if not deltas:  # the request is still being decoded: it has not been counted yet
                in_flight_at_first_delta = server.metric(counted) == before
            deltas.append(event.delta)
        else:
            assert event.type == "transcript.text.done"
            done = event
    assert done is not None and len(deltas) >= 2, deltas
    assert in_flight_at_first_delta, "the first delta came only after the request had ended"
    assert "".join(deltas) == done.text
    assert harness.wer([f"{JFK} {JFK}"], [done.text], "en") < 20, done.text


def test_a_wrong_key_is_401(server: ServerProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(server, key="not-the-key").audio.transcriptions.create(
            model="whisper-1", file=wav_upload())
    assert refused.value.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="asr-server"'
    body: Any = refused.value.body
    assert body["code"] == "unauthorized" and body["type"] == "authentication_error"
    assert "not-the-key" not in json.dumps(body)


def test_the_key_is_checked_before_the_body_is_read(server: ServerProcess) -> None:
    """Headers that announce 300 MB and a wrong key are answered 401 with no byte of the body sent."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 300000000\r\n\r\n")
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 401"), reply[:200]


def test_a_file_over_max_audio_bytes_is_413(strict_server: ServerProcess) -> None:
    big = harness.wav_bytes(np.zeros(STRICT_MAX_BYTES // 2 + 16_000, dtype=np.float32), 16_000)
    with pytest.raises(openai.APIStatusError) as refused:
        client(strict_server).audio.transcriptions.create(model="whisper-1",
                                                          file=("big.wav", big, "audio/wav"))
    assert refused.value.status_code == 413
    body: Any = refused.value.body
    assert body["code"] == "audio_too_large" and body["param"] == "file"


@pytest.mark.parametrize("fields, code, param", [
    ({"language": "tlh"}, "unsupported_language", "language"),
    ({"response_format": "docx"}, "bad_request", "response_format"),
    ({"temperature": 1.5}, "bad_request", "temperature"),
])
def test_bad_fields_are_400_naming_the_field(server: ServerProcess, fields: dict[str, Any], code: str,
                                             param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).audio.transcriptions.create(model="whisper-1", file=wav_upload(),
                                                   **fields)
    body: Any = refused.value.body
    assert (body["code"], body["param"], body["type"]) == (code, param, "invalid_request_error")


def test_unreadable_audio_is_400_invalid_audio(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"ID3" + b"\0" * 500))
    body: Any = refused.value.body
    assert body["code"] == "invalid_audio" and body["param"] == "file"


def test_models_lists_the_loaded_model(server: ServerProcess) -> None:
    models = [m.id for m in client(server).models.list()]
    assert models == ["base"]
    with pytest.raises(openai.AuthenticationError):
        client(server, key="nope").models.list()


def test_a_connection_that_sends_nothing_is_closed(strict_server: ServerProcess) -> None:
    """aiohttp's keep-alive timer, armed at connect, is the metadata timeout (1 s on this server)."""
    with socket.create_connection(("127.0.0.1", strict_server.http_port), timeout=30) as sock:
        assert sock.recv(1024) == b""  # closed by the server, long before the socket's own timeout


def test_open_connections_are_capped_and_the_port_recovers(server: ServerProcess) -> None:
    """MAX_PENDING_CONNECTIONS (256 here) open at once; those past it are told 503 and closed unread."""
    held = [socket.create_connection(("127.0.0.1", server.http_port), timeout=30) for _ in range(400)]
    try:
        def answered() -> list[bytes] | None:
            readable = select.select(held, [], [], 0)[0]
            return [sock.recv(4096) for sock in readable] if len(readable) >= 400 - 356 else None

        # 400 - 356: at most the cap plus one accept burst (asyncio's backlog, 100) are let in.
        replies = harness.wait_until(answered, 30, "the connections past the cap to be refused")
    finally:
        for sock in held:
            sock.close()
    assert all(r.startswith(b"HTTP/1.1 503") and b'"code": "overloaded"' in r for r in replies), replies[0]
    assert harness.wait_until(lambda: client(server).models.list().data, 30, "the port serving again")


def _post(port: int, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def _part(name: str, value: bytes, extra: str = "") -> bytes:
    return f'--zz\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value + b"\r\n"


@pytest.mark.parametrize("content_type, body, detail", [
    ("multipart/form-data", b"abc", "not a readable multipart"),
    ("multipart/form-data; boundary=zz", b"garbage, no boundary in sight", "not a readable multipart"),
    ("application/x-www-form-urlencoded", b"file=abc", "multipart/form-data"),
    ("multipart/form-data; boundary=zz", _part("model", b"whisper-1") + b"--zz--\r\n", "no 'file' field"),
    ("multipart/form-data; boundary=zz", _part("prompt", b"x" * 70_000) + b"--zz--\r\n", "larger than"),
    ("multipart/form-data; boundary=zz", b"".join(_part(f"f{i}", b"1") for i in range(70)) + b"--zz--\r\n",
     "more than 64 form fields"),
    ("multipart/form-data; boundary=zz", _part("file", b"RIFF", '; filename="a.wav"') * 2 + b"--zz--\r\n",
     "one file per request"),
])
def test_malformed_forms_are_400_and_the_server_serves_on(server: ServerProcess, content_type: str,
                                                          body: bytes, detail: str) -> None:
    status, reply = _post(server.http_port, content_type, body)
    assert status == 400 and reply["error"]["code"] == "bad_request" and detail in reply["error"]["message"]
    assert server.health()[0] == 200
