"""A live dictation client on the official openai SDK: a recording streamed at real-time pace.

``stream`` opens ``/v1/realtime?intent=transcription`` with
``client.realtime.connect``, sends the audio in 100 ms appends (24 kHz s16le,
base64, as OpenAI's clients do) from a thread that keeps to the clock, and
records every server event with the time it arrived, counted from the
moment the first audio was sent. The tests and ``scripts/live_bench.py``
read what happened from a ``LiveRun``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from openai import OpenAI

RATE = 24_000


def load_24k(path: Path, pause_s: float = 0.0) -> np.ndarray:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = soxr.resample(samples.mean(axis=1), rate, RATE)
    return np.concatenate([audio, np.zeros(int(pause_s * RATE), np.float32)]).astype(np.float32)


def joined(paths: list[Path], pause_s: float) -> np.ndarray:
    """Clips one after another with ``pause_s`` of silence after each."""
    return np.concatenate([load_24k(p, pause_s) for p in paths])


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


@dataclass
class LiveRun:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio_s: float = 0.0
    error: BaseException | None = None

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [e for _, e in self.of("conversation.item.input_audio_transcription.completed")]

    @property
    def text(self) -> str:
        return " ".join(e["transcript"] for e in self.completed if e["transcript"]).strip()

    def deltas(self, item_id: str) -> list[str]:
        return [e["delta"] for _, e in self.of("conversation.item.input_audio_transcription.delta")
                if e["item_id"] == item_id]


def _receive(conn: Any, timeout_s: float) -> dict[str, Any] | None:
    """The next event as sent (a dict), after the SDK has parsed it too; None after ``timeout_s``.

    The SDK's ``recv`` has no timeout, so the frame is read from its connection (websockets'),
    and handed to the SDK's own parser, which must take every event the server sends.
    """
    try:
        message = conn._connection.recv(timeout=timeout_s)
    except TimeoutError:
        return None
    conn.parse_event(message)
    event: dict[str, Any] = json.loads(message)
    return event


def _settled(run: LiveRun) -> bool:
    """Every committed item has completed or failed, and no turn is open."""
    committed = {e["item_id"] for _, e in run.of("input_audio_buffer.committed")}
    done = {e["item_id"] for _, e in run.events if e["type"].endswith((".completed", ".failed"))}
    started = {e["item_id"] for _, e in run.of("input_audio_buffer.speech_started")}
    return committed <= done and started <= committed


def stream(port: int, audio: np.ndarray, key: str = "none", session: dict[str, Any] | None = None,
           pace: float = 1.0, chunk_s: float = 0.1, commit: bool = False, settle_s: float = 30.0,
           before: Callable[[Any], None] | None = None, headers: dict[str, str] | None = None) -> LiveRun:
    """Stream 24 kHz ``audio``; with ``commit``, commit once it is all sent. Waits until every item
    has completed (at most ``settle_s`` after the audio ends)."""
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    run = LiveRun(audio_s=len(audio) / RATE)
    data = pcm16(audio)
    step = int(chunk_s * RATE) * 2
    query = {"intent": "transcription"}
    with client.realtime.connect(extra_query=query, extra_headers=headers or {}) as conn:
        run.events.append((0.0, _receive(conn, 30.0) or {"type": "none"}))
        if session is not None:
            conn.session.update(session={"type": "transcription", **session})
        if before is not None:
            before(conn)
        started = time.monotonic()
        sent = threading.Event()

        def send() -> None:
            try:
                for i in range(0, len(data), step):
                    delay = started + (i / 2 / RATE) / pace - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    conn.input_audio_buffer.append(audio=base64.b64encode(data[i:i + step]).decode())
                if commit:
                    conn.input_audio_buffer.commit()
            except BaseException as exc:  # reported by the caller
                run.error = exc
            sent.set()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = started + run.audio_s / pace + settle_s
        while time.monotonic() < deadline:
            try:
                event = _receive(conn, 0.25)
            except Exception as exc:  # closed by the server
                run.error = run.error or exc
                break
            if event is None:
                if sent.is_set() and _settled(run) and not commit:
                    break
                continue
            run.events.append((time.monotonic() - started, event))
            if sent.is_set() and _settled(run) and (not commit or run.completed):
                break
        sender.join(timeout=5)
    return run
