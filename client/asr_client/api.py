"""The Python API: ``transcribe()`` makes one request of the wire contract and returns a typed ``Result``.

One short-lived WebSocket per request, as the spec has it: the metadata text
frame, the WAV binary frame, then one JSON frame (a result or an error) and the
server's close. Fields the caller leaves at None are not sent, so the server's
own defaults apply and a request without the extensions is exactly the spec's.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from asr_client.audio import AudioSource, read_source, to_wav
from asr_client.errors import SERVER_CODES, UNKNOWN_SERVER_CODE, AsrClientError
from asr_client.machine_id import machine_id as compute_machine_id

DEFAULT_SERVER = "ws://127.0.0.1:8765"
PATH = "/ws/transcribe"
# websockets closes with 1009 when a frame is over its max_size: the server's MAX_AUDIO_BYTES.
CLOSE_TOO_BIG = 1009
# A result with word timestamps for the longest audio is a few MB; this only bounds a runaway reply.
MAX_RESULT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Word:
    word: str  # as whisper spells it, with its leading space
    start: float  # seconds
    end: float  # seconds
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float  # seconds
    text: str
    words: tuple[Word, ...] | None = None  # only when word_timestamps was asked for


@dataclass(frozen=True)
class Result:
    text: str  # the raw transcript (or English translation)
    segments: tuple[Segment, ...]
    language: str  # detected or given source language; "" when there was no speech
    postprocessed_text: str | None = None
    postprocess_ms: float = 0.0
    postprocess_error: str | None = None

    @property
    def best_text(self) -> str:
        """The LLM-corrected text when there is one, else the raw text (the spec's client idiom)."""
        return self.postprocessed_text or self.text

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Result:
        """A result frame as a ``Result``; a frame that does not have the contract's shape raises."""
        try:
            segments = tuple(
                Segment(start=float(s["start"]), end=float(s["end"]), text=str(s["text"]),
                        words=None if s.get("words") is None else tuple(
                            Word(word=str(w["word"]), start=float(w["start"]), end=float(w["end"]),
                                 probability=float(w["probability"])) for w in s["words"]))
                for s in obj["segments"])
            postprocessed = obj.get("postprocessed_text")
            error = obj.get("postprocess_error")
            return cls(text=str(obj["text"]), segments=segments, language=str(obj.get("language") or ""),
                       postprocessed_text=None if postprocessed is None else str(postprocessed),
                       postprocess_ms=float(obj.get("postprocess_ms") or 0.0),
                       postprocess_error=None if error is None else str(error))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AsrClientError("protocol_error",
                                 f"the result frame lacks or mistypes a field ({exc!r})") from None

    def to_json(self) -> dict[str, Any]:
        """The result as the server sent it (``words`` only on segments that have them)."""
        def segment(s: Segment) -> dict[str, Any]:
            shown: dict[str, Any] = {"text": s.text, "start": s.start, "end": s.end}
            if s.words is not None:
                shown["words"] = [{"word": w.word, "start": w.start, "end": w.end,
                                   "probability": w.probability} for w in s.words]
            return shown

        return {"text": self.text, "segments": [segment(s) for s in self.segments],
                "language": self.language, "postprocessed_text": self.postprocessed_text,
                "postprocess_ms": self.postprocess_ms, "postprocess_error": self.postprocess_error}


@functools.cache
def _this_machine_id() -> str:
    # Windows and macOS read it through subprocesses: once per process is enough.
    return compute_machine_id()


def endpoint(server: str) -> str:
    """``ws://host:port`` (or with the path already) as the transcribe URL."""
    server = server.rstrip("/")
    return server if server.endswith(PATH) else server + PATH


def metadata(*, key: str | None, language: str | None, task: str, word_timestamps: bool,
             prompt: str | None, postprocess: bool | None, machine_id: str) -> dict[str, Any]:
    """Frame 1; the extensions and the optional fields only when asked for."""
    frame: dict[str, Any] = {"type": "transcribe", "language": language, "task": task,
                             "machine_id": machine_id}
    if key is not None:
        frame["api_key"] = key
    if postprocess is not None:
        frame["postprocess"] = postprocess
    if word_timestamps:
        frame["word_timestamps"] = True
    if prompt is not None:
        frame["prompt"] = prompt
    return frame


def transcribe(source: AudioSource, *, server: str = DEFAULT_SERVER, key: str | None = None,
               language: str | None = None, task: str = "transcribe", word_timestamps: bool = False,
               prompt: str | None = None, postprocess: bool | None = None,
               machine_id: str | None = None, timeout_s: float = 600.0) -> Result:
    """Transcribe (or translate) one file or bytes; raises ``AsrClientError`` on any failure.

    ``timeout_s`` bounds the wait for the answer once the audio is sent (connecting has
    its own bound, the smaller of 30 s and ``timeout_s``). ``machine_id=None`` sends
    this machine's id from ``asr_client.machine_id``.
    """
    data, name = read_source(source)
    wav = to_wav(data, name)
    frame = metadata(key=key, language=language, task=task, word_timestamps=word_timestamps,
                     prompt=prompt, postprocess=postprocess,
                     machine_id=_this_machine_id() if machine_id is None else machine_id)
    return _exchange(endpoint(server), json.dumps(frame), wav, timeout_s)


def _exchange(url: str, frame: str, wav: bytes, timeout_s: float) -> Result:
    try:
        # compression=None: the server declines permessage-deflate anyway (WAV does not compress).
        ws = connect(url, open_timeout=min(30.0, timeout_s), close_timeout=5, compression=None,
                     max_size=MAX_RESULT_BYTES)
    except InvalidURI as exc:
        raise AsrClientError("connection_failed", f"not a WebSocket URL: {exc}") from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise AsrClientError("connection_failed", f"{url}: {exc or type(exc).__name__}") from None
    with ws:
        try:
            ws.send(frame)
            ws.send(wav)
        except ConnectionClosed:
            # The server may answer and close before it reads the audio (a wrong key is judged on
            # frame 1 alone): its answer is still queued for recv below.
            pass
        try:
            reply = ws.recv(timeout=timeout_s)
        except TimeoutError:
            raise AsrClientError("response_timeout", f"no answer within {timeout_s:g} s") from None
        except ConnectionClosed as closed:
            raise _closed_without_answer(closed) from None
    return parse_reply(reply)


def _closed_without_answer(closed: ConnectionClosed) -> AsrClientError:
    if closed.rcvd is not None and closed.rcvd.code == CLOSE_TOO_BIG:
        # The one error the server cannot put in a frame: its WebSocket layer refused the frame.
        return AsrClientError("audio_too_large", closed.rcvd.reason or "the audio frame is over the "
                              "server's MAX_AUDIO_BYTES")
    if closed.rcvd is not None:
        return AsrClientError("protocol_error", f"the server closed ({closed.rcvd.code} "
                              f"{closed.rcvd.reason!r}) without an answer")
    return AsrClientError("protocol_error", "the connection was lost before an answer came")


def parse_reply(reply: str | bytes) -> Result:
    if isinstance(reply, bytes):
        raise AsrClientError("protocol_error", "the server answered with a binary frame")
    try:
        obj = json.loads(reply)
    except ValueError:
        raise AsrClientError("protocol_error", "the server's answer is not JSON") from None
    if not isinstance(obj, dict):
        raise AsrClientError("protocol_error", "the server's answer is not a JSON object")
    if "error" in obj:
        code = str(obj["error"])
        detail = obj.get("detail")
        shown = None if detail is None else str(detail)
        if code not in SERVER_CODES:
            # A newer server's code: keep it in the detail, exit with the "unknown" number.
            raise AsrClientError(UNKNOWN_SERVER_CODE, f"{code}: {shown}" if shown else code)
        raise AsrClientError(code, shown)
    return Result.from_json(obj)
