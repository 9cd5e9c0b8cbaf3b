"""No request waits behind another: a 3 s clip sent while the 232 s LJSpeech clip decodes is answered first.

The server runs in its default configuration (beam 5, ASR_MAX_BATCH=8, the
same loop as on CUDA); the short clip's latency alone is measured on the
same server just before, so the bound is relative to this host's speed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness import EVAL_DIR, ServerProcess, load_manifest, pong_latency, wait_until

from .conftest import KEY, exchange, request

SHORT = EVAL_DIR / "en" / "en_pocketsphinx_sense_and_sensibility_0880.wav"  # 3.0 s


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    with ServerProcess(env={"SERVER_API_KEY": KEY}) as process:
        yield process


def short_latency(server: ServerProcess, **fields: object) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    reply = exchange(server.url, request("en", **fields), SHORT.read_bytes()).reply
    assert reply.get("text"), reply
    return time.monotonic() - started, reply


def test_a_short_clip_is_answered_before_a_long_one_sent_first(default_server: ServerProcess) -> None:
    server = default_server
    short_latency(server)  # warm
    alone, reply = short_latency(server)
    assert all("words" not in segment for segment in reply["segments"])  # only when asked for

    long_clip = next(c for c in load_manifest() if "ljspeech" in c.path.name)
    answered: dict[str, float] = {}
    passes = server.metric("asr_batch_size_count")
    with connect(server.url, max_size=None) as long_ws:
        long_ws.send(json.dumps(request("en")))
        long_ws.send(long_clip.path.read_bytes())
        sent = time.monotonic()

        def wait_long() -> None:
            try:
                long_ws.recv(timeout=900)
                answered["long"] = time.monotonic()
            except (ConnectionClosed, TimeoutError):
                pass

        waiter = threading.Thread(target=wait_long)
        waiter.start()
        # Sent once the long clip is decoding (its first decoder pass is counted), and 1 s after it.
        wait_until(lambda: server.metric("asr_batch_size_count") > passes and time.monotonic() - sent >= 1.0,
                   120, "the long clip's first decoder pass")
        pong = pong_latency(server.url)
        latency, _ = short_latency(server)
        answered["short"] = time.monotonic()
        long_done_then = "long" in answered
        mark = len(server.lines)
        long_ws.close()  # the long request is dropped by the loop: nobody waits for it
        waiter.join(60)
    server.wait_for_line("left the decoding loop: its client has gone", timeout_s=60, after=mark)
    print(f"short clip alone {alone:.2f} s, beside the 232 s clip {latency:.2f} s ({latency / alone:.2f}x)")
    assert not long_done_then, "the long clip was answered first"
    assert pong <= 1.0, f"a ping took {pong:.2f} s while the long clip decoded"
    assert latency <= 3 * alone, (latency, alone)


def test_word_timestamps_on_request(default_server: ServerProcess) -> None:
    _, reply = short_latency(default_server, word_timestamps=True)
    segments = reply["segments"]
    assert isinstance(segments, list) and segments
    for segment in segments:
        words = segment["words"]
        assert words and set(words[0]) == {"word", "start", "end", "probability"}
        assert "".join(w["word"] for w in words).split() == segment["text"].split()
