"""``asr-client live``: a file streamed at real-time pace (or the microphone) to ``/v1/realtime``.

The server's live endpoint speaks OpenAI's Realtime API in transcription mode;
this client sends its audio as raw s16le binary frames at 16 kHz (the server's
extension, no base64), lets the server's VAD cut turns, and hands each final
piece of text to ``on_text`` as it comes (the ``delta`` events) and the end of
each turn to ``on_item``. At the end of the file (or Ctrl-C on the microphone)
it commits what is still open and waits for every turn to complete.
The key goes in the ``Authorization`` header and is never printed.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from asr_client.audio import read_source
from asr_client.errors import SERVER_CODES, UNKNOWN_SERVER_CODE, AsrClientError

DEFAULT_LIVE_SERVER = "ws://127.0.0.1:8767"
RATE = 16_000
CHUNK_S = 0.1
DELTA = "conversation.item.input_audio_transcription.delta"
DONE = ("conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed")


def file_chunks(path: str, pace: float = 1.0) -> Iterator[np.ndarray]:
    """The file as 16 kHz mono float32, 100 ms at a time, each when its time comes (``pace`` 0: at once)."""
    import io

    import soundfile as sf
    import soxr

    data, name = read_source(path)
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AsrClientError("unreadable_audio", f"{name}: {exc}") from None
    audio = soxr.resample(samples.mean(axis=1), rate, RATE).astype(np.float32)
    step = int(CHUNK_S * RATE)
    started = time.monotonic()
    for i in range(0, len(audio), step):
        if pace > 0:
            delay = started + i / RATE / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield audio[i:i + step]


def microphone_chunks(stop: threading.Event) -> Iterator[np.ndarray]:
    """The default input device, 100 ms at a time, until ``stop`` (needs ``asr-client[mic]``)."""
    try:
        import sounddevice  # type: ignore[import-not-found]  # the optional mic extra
    except ImportError:
        raise AsrClientError("unreadable_audio", "--mic needs the mic extra: pip install "
                                                 "'asr-client[mic]' (sounddevice, PortAudio)") from None
    blocks: queue.Queue[np.ndarray] = queue.Queue()
    with sounddevice.InputStream(samplerate=RATE, channels=1, dtype="float32", blocksize=int(CHUNK_S * RATE),
                                 callback=lambda data, frames, when, status: blocks.put(data[:, 0].copy())):
        while not stop.is_set():
            try:
                yield blocks.get(timeout=0.5)
            except queue.Empty:
                continue


def live(chunks: Iterator[np.ndarray], server: str = DEFAULT_LIVE_SERVER, key: str | None = None,
         language: str | None = None, prompt: str | None = None,
         on_text: Callable[[str], None] = lambda text: None,
         on_item: Callable[[dict[str, Any]], None] = lambda item: None,
         machine_id: str | None = None, timeout_s: float = 60.0) -> list[str]:
    """Stream ``chunks``; the completed transcripts, in order."""
    url = server.rstrip("/") + "/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if machine_id:
        headers["X-Machine-Id"] = machine_id
    try:
        ws = connect(url, additional_headers=headers, open_timeout=30, max_size=16 << 20)
    except InvalidStatus as exc:
        code = "unauthorized" if exc.response.status_code == 401 else "connection_failed"
        status = exc.response.status_code
        raise AsrClientError(code, f"the server refused the session (HTTP {status})") from None
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise AsrClientError("connection_failed", f"{url}: {exc}") from None
    with ws:
        transcription: dict[str, Any] = {"language": language, "prompt": prompt or ""}
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": RATE}, "transcription": transcription}}}}))
        reader = _Reader(ws, on_text, on_item)
        thread = threading.Thread(target=reader.run, daemon=True)
        thread.start()
        for chunk in chunks:
            if reader.error is not None:
                break
            ws.send((np.clip(chunk, -1.0, 1.0) * 32767).astype("<i2").tobytes())
        if reader.error is None:
            # Commit what is still open (with nothing open, the server answers an error event, which
            # is ignored), then a session.update whose answer comes after the commit's: once it is
            # back, the open items are all that is left to wait for.
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
            reader.flushed.wait(timeout_s)
            reader.drained.wait(timeout_s)
        if reader.error is not None:
            raise reader.error
        if reader.open_items:
            raise AsrClientError("response_timeout", f"the last turn did not complete within {timeout_s:g} s")
        return reader.transcripts


class _Reader:
    """The server's events on a thread of their own, so sending keeps to the clock."""

    def __init__(self, ws: ClientConnection, on_text: Callable[[str], None],
                 on_item: Callable[[dict[str, Any]], None]) -> None:
        self.ws, self.on_text, self.on_item = ws, on_text, on_item
        self.open_items: set[str] = set()
        self.transcripts: list[str] = []
        self.error: AsrClientError | None = None
        self.done_items: set[str] = set()
        self.drained = threading.Event()  # no item open
        self.drained.set()
        self.flushed = threading.Event()  # the second session.updated: the end's flush came back
        self._updates = 0

    def run(self) -> None:
        try:
            for message in self.ws:
                self._event(json.loads(message))
        except (ConnectionClosed, OSError, ValueError) as exc:
            self.error = self.error or AsrClientError("protocol_error", f"the session ended: {exc}")
        finally:
            self.flushed.set()
            self.drained.set()

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("input_audio_buffer.speech_started", "input_audio_buffer.committed"):
            if event["item_id"] not in self.done_items:
                self.open_items.add(event["item_id"])
                self.drained.clear()
        elif kind == "session.updated":
            self._updates += 1
            if self._updates >= 2:
                self.flushed.set()
        elif kind == DELTA:
            self.on_text(event["delta"])
        elif kind in DONE:
            self.open_items.discard(event["item_id"])
            self.done_items.add(event["item_id"])
            if kind == DONE[0]:
                self.transcripts.append(event["transcript"])
            self.on_item(event)
            if not self.open_items:
                self.drained.set()
        elif kind == "error":
            error = event.get("error") or {}
            code = error.get("code") if error.get("code") in SERVER_CODES else UNKNOWN_SERVER_CODE
            if code in ("unauthorized", "overloaded", "timeout", "internal_error"):  # the session ends
                self.error = AsrClientError(code, str(error.get("message", "")))
