"""Post-processing through the real server: a real local LLM, and named fault doubles for the faults.

The real LLM is SmolLM2-135M-Instruct behind llama-cpp-python's
OpenAI-compatible server. Faults a real LLM cannot be made to produce on
demand (HTTP 500, a non-JSON body, an answer instead of a correction, a
server that never answers) come from ``FaultInjectingLLM`` and
``SilentSocket``, named as such; a real LLM that stalls for as long as a test
needs is the real server paused with SIGSTOP (``paused``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jiwer
import numpy as np
import openai
import pytest
from aiohttp import web

from tests.harness import EVAL_DIR, LlamaServer, ServerProcess, load_manifest, normalise, wav_bytes, wer

from .conftest import KEY, exchange, request

JFK = (EVAL_DIR / "en" / "en_whisper_jfk.wav").read_bytes()
TIMEOUT_S = 3.0
MARGIN_MS = 1500


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaServer]:
    with LlamaServer() as server:
        yield server


def pp_server(url: str, default: bool = False, timeout_s: float = 60.0, **env: str) -> ServerProcess:
    return ServerProcess(env={"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY, "POSTPROCESS_URL": url,
                              "LOG_LEVEL": "DEBUG", "POSTPROCESS_DEFAULT": str(default).lower(),
                              "POSTPROCESS_TIMEOUT_S": str(timeout_s), "POSTPROCESS_MODEL": "smollm2", **env})


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll an observable state (a log's count, a reply) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def served_exactly(llm: LlamaServer, count: int) -> None:
    """The LLM's access log reaches ``count`` (it lags the reply a little), and is still there once a
    later request of ours is logged: the server awaited its calls before it replied, so a call too many
    would be in the log before that fence."""
    wait_for(lambda: llm.completions >= count, f"{count} completions in the LLM's log")
    llm.fence()
    assert llm.completions == count


def test_a_real_llm_correction_is_no_worse_than_the_raw_text_or_is_refused(llm: LlamaServer) -> None:
    references = {clip.path.relative_to(EVAL_DIR).as_posix(): clip.text for clip in load_manifest()}
    with pp_server(llm.url) as server:
        assert server.health() == (200, {"status": "ok", "postprocess_enabled": True})
        for path, language in (("en/en_whisper_jfk.wav", "en"), ("de/de_fleurs_001.wav", "de")):
            before = llm.completions
            reply = exchange(server.url, request(language, postprocess=True), (EVAL_DIR / path).read_bytes()
                             ).reply
            served_exactly(llm, before + 1)
            assert reply["text"] and reply["postprocess_ms"] > 0
            if reply["postprocessed_text"] is None:
                assert reply["postprocess_error"], reply
                continue
            assert reply["postprocess_error"] is None
            # Measured apart from the guard: Whisper's normaliser and jiwer, against the human reference.
            reference, raw, corrected = references[path], reply["text"], reply["postprocessed_text"]
            assert wer([reference], [corrected], language) <= wer([reference], [raw], language), reply
            changed = jiwer.wer(normalise(raw, language), normalise(corrected, language))
            assert changed <= 0.2, (changed, reply)


def test_the_flag_and_the_default_decide_whether_the_llm_is_called(llm: LlamaServer) -> None:
    with pp_server(llm.url, default=False) as server:
        before = llm.completions
        off = exchange(server.url, request("en", postprocess=False), JFK).reply
        unset = exchange(server.url, request("en"), JFK).reply
        silence = exchange(server.url, request("en", postprocess=True),
                           wav_bytes(np.zeros(16_000 * 3, dtype=np.int16), 16_000)).reply
        # One request that does call; the LLM serves in order, so had any of the three above
        # called too, its line would be in the log before this one's.
        exchange(server.url, request("en", postprocess=True), JFK)
        served_exactly(llm, before + 1)  # no call: off, default off, and an empty transcript
        for reply in (off, unset):
            assert (reply["postprocessed_text"], reply["postprocess_ms"], reply["postprocess_error"]) == (
                None, 0, None)
        assert (silence["text"], silence["postprocessed_text"], silence["postprocess_ms"]) == ("", "", 0)
    with pp_server(llm.url, default=True) as server:
        before = llm.completions
        exchange(server.url, request("en"), JFK)
        served_exactly(llm, before + 1)
        metrics = server.http_get("/metrics", server.metrics_port)[1]
        assert 'asr_postprocess_seconds_count{machine_id="ab12cd",task="transcribe"} 1.0' in metrics
        # The HTTP API follows the same default: verbose_json carries the LLM's outcome, and
        # subtitles never call it (a rewrite has no times).
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=KEY, max_retries=0,
                            timeout=300)
        subtitles = api.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", JFK), language="en",
                                                    response_format="srt")
        verbose: Any = api.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", JFK),
                                                       language="en", response_format="verbose_json")
        served_exactly(llm, before + 2)
        assert "your country" in subtitles and "your country" in verbose.text
        assert verbose.postprocess_ms > 0 and (verbose.postprocessed_text or verbose.postprocess_error)


def test_asked_for_without_an_endpoint(server: ServerProcess) -> None:
    reply = exchange(server.url, request("en", postprocess=True), JFK).reply
    assert reply["postprocessed_text"] is None and "not configured" in reply["postprocess_error"]
    assert reply["postprocess_ms"] == 0 and "country" in reply["text"]


class FaultInjectingLLM:
    """Fault double: an HTTP endpoint that fails the way a broken LLM server does, by ``mode``."""

    def __init__(self) -> None:
        self.mode = "500"
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True).start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._reply)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._ready.set()
        await asyncio.Event().wait()

    async def _reply(self, request: web.Request) -> web.Response:
        if self.mode == "500":
            return web.Response(status=500, text="internal error")
        if self.mode == "junk":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if self.mode == "slow":
            await asyncio.Event().wait()  # never answers
        body: dict[str, Any] = await request.json()
        assert "<transcript>" in body["messages"][-1]["content"]
        answer = "I am sorry, but as an AI I cannot help with questions about what a country can do."
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": answer}}]})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class SilentSocket:
    """Fault double: accepts TCP connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: connecting is refused


@pytest.mark.parametrize(("fault", "reason"), [
    ("down", "unreachable"), ("silent", "did not answer"), ("500", "HTTP 500"), ("junk", "not JSON"),
    ("answer", "rejected"),
])
def test_every_fault_gives_the_raw_text_and_a_reason(fault: str, reason: str) -> None:
    double = FaultInjectingLLM()
    silent = SilentSocket()
    double.mode = fault
    url = {"down": f"http://127.0.0.1:{refused_port()}/v1", "silent": f"http://127.0.0.1:{silent.port}/v1"
           }.get(fault, double.url)
    with pp_server(url, timeout_s=TIMEOUT_S) as server:
        reply = exchange(server.url, request("en", postprocess=True), JFK).reply
    assert "what you can do for your country" in reply["text"].lower()
    assert reply["postprocessed_text"] is None
    assert reason in reply["postprocess_error"], reply["postprocess_error"]
    assert 0 < reply["postprocess_ms"] <= TIMEOUT_S * 1000 + MARGIN_MS


def test_a_slow_llm_does_not_hold_the_worker() -> None:
    double = FaultInjectingLLM()
    double.mode = "slow"
    with pp_server(double.url, timeout_s=20) as server:
        order: list[str] = []

        def client(name: str, postprocess: bool) -> None:
            exchange(server.url, request("en", postprocess=postprocess), JFK)
            order.append(name)

        waiting = threading.Thread(target=client, args=("waits on the LLM", True))
        waiting.start()
        server.wait_for_line("calling the LLM", timeout_s=120)  # its transcript is done
        client("plain", False)
        waiting.join(60)
    assert order == ["plain", "waits on the LLM"]


@contextmanager
def paused(llm: LlamaServer) -> Iterator[None]:
    """The real LLM server stopped (SIGSTOP): it accepts connections and answers nothing until resumed."""
    assert llm.proc is not None
    os.kill(llm.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(llm.proc.pid, signal.SIGCONT)


def test_a_call_that_finds_every_slot_taken_is_busy_not_timed_out(llm: LlamaServer) -> None:
    replies: dict[str, dict[str, Any]] = {}
    with pp_server(llm.url, timeout_s=120, POSTPROCESS_MAX_CONCURRENCY="1",
                   POSTPROCESS_SLOT_WAIT_S="1") as server:
        first = threading.Thread(target=lambda: replies.setdefault(
            "first", exchange(server.url, request("en", postprocess=True), JFK).reply))
        with paused(llm):
            first.start()
            server.wait_for_line("calling the LLM", timeout_s=120)  # the first holds the only slot
            replies["second"] = exchange(server.url, request("en", postprocess=True), JFK).reply
        first.join(180)
        busy = server.wait_for_line("post-processing busy")
    second = replies["second"]
    assert "what you can do for your country" in second["text"].lower()
    assert second["postprocessed_text"] is None
    assert second["postprocess_error"] == "post-processing busy: 1 of 1 LLM slots in use for 1 s"
    assert 1000 <= second["postprocess_ms"] <= 1000 + MARGIN_MS
    assert "WARNING" in busy
    # The first had the slot and the whole of its timeout: the resumed LLM answered it.
    outcome = replies["first"]["postprocess_error"] or "accepted"
    assert "busy" not in outcome and "did not answer" not in outcome, outcome
