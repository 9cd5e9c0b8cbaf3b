"""The conductor: one WebSocket exchange per connection; ``GET /health`` and the page on the same port.

metadata frame -> key check -> audio frame -> WAV decode (off the loop) ->
scheduler -> result frame -> close 1000. This is the only layer that knows
of sockets: errors raised below become an error frame and a close code here,
and the one log line per request is written here, whatever the outcome.
Transcripts, audio and keys never reach the log.

Before the key check a connection is one of at most ``MAX_PENDING_CONNECTIONS``
and its reads are gated (``ws_gate``): the server holds its metadata frame
and one socket read, and reads its audio only once the key has passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from asr_server import protocol
from asr_server.audio import decode_wav
from asr_server.config import Config
from asr_server.errors import (
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    AsrError,
    AudioTooLarge,
    BadRequest,
    InternalError,
    Overloaded,
    Unauthorized,
)
from asr_server.limits import Allowance, AudioBudget, ConnectionLimiter, client_address
from asr_server.metrics import Metrics, RequestOutcome
from asr_server.page import PAGE_PATHS, load_page
from asr_server.postprocess import PostProcessor
from asr_server.scheduler import Scheduler
from asr_server.ws_gate import GatedConnection

log = logging.getLogger(__name__)

WS_PATH = "/ws/transcribe"
HEALTH_PATH = "/health"
CLIENT_GONE = "client_gone"  # statuses of requests that ended without a frame of ours
CUT_BY_SHUTDOWN = "shutdown"  # still running when SIGTERM's grace period ended


class ClientGone(Exception):
    """The client closed the connection before its result was ready."""


@dataclass
class RequestRecord:
    """What the request log line and the metrics say; filled in as the exchange goes."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.monotonic)
    kind: str = "transcribe"
    authenticated: bool = False
    machine_id: str = "unknown"  # as sent; guarded before it becomes a label
    task: str = "unknown"
    language: str = "-"
    audio_s: float = 0.0
    audio_arrived: float | None = None
    postprocess_s: float | None = None  # None: no LLM call was made
    status: str = "ok"

    def outcome(self, machine_label: str) -> RequestOutcome:
        processing = time.monotonic() - self.audio_arrived if self.audio_arrived else None
        return RequestOutcome(machine_id=machine_label, task=self.task, status=self.status,
                              audio_seconds=self.audio_s, processing_seconds=processing,
                              postprocess_seconds=self.postprocess_s)

    def log_fields(self, machine_label: str) -> dict[str, object]:
        return {
            "request_id": self.request_id, "machine_id": machine_label, "task": self.task,
            "language": self.language, "audio_s": round(self.audio_s, 2),
            "processing_ms": round((time.monotonic() - self.started) * 1000),
            "status": "ok" if self.status == "ok" else "error",
            "error": None if self.status == "ok" else self.status,
        }


class AsrServer:
    """Serves ``/ws/transcribe``, ``/health`` and the page (``page``) for one scheduler."""

    def __init__(self, config: Config, scheduler: Scheduler, metrics: Metrics,
                 postprocessor: PostProcessor) -> None:
        self.config = config
        self.scheduler = scheduler
        self.metrics = metrics
        self.postprocessor = postprocessor
        self.keys = protocol.KeyRing(config.api_keys)
        self.connections = ConnectionLimiter(config.max_connections, config.max_connections_per_ip)
        self.audio_budget = AudioBudget(config.max_inflight_audio_bytes)
        self.pending = ConnectionLimiter(config.effective_max_pending_connections)  # before auth
        self.open_connections = 0
        self.draining = False
        self.page = load_page()

    def health(self) -> tuple[int, dict[str, Any]]:
        if self.scheduler.load_error is not None:
            return 503, {"status": "error", "detail": "the model failed to load"}
        if self.scheduler.ready and not self.scheduler.alive:
            return 503, {"status": "error", "detail": "the inference worker is not running"}
        if self.draining:
            return 503, {"status": "draining"}
        if not self.scheduler.ready:
            return 503, {"status": "loading"}
        return 200, {"status": "ok", "postprocess_enabled": self.postprocessor.enabled}

    def ready(self) -> float:
        return 1.0 if self.health()[0] == 200 else 0.0

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None
        if path == HEALTH_PATH:
            status, body = self.health()
            response = connection.respond(status, json.dumps(body) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if path in PAGE_PATHS:
            return self.page.respond(connection)
        return connection.respond(404, "not found\n")

    def listen(self) -> Any:
        """The websockets server, not yet awaited (``await`` it to start listening)."""
        return serve(
            self.handle,
            self.config.host,
            self.config.port,
            process_request=self.process_request,
            create_connection=GatedConnection,
            compression=None,  # WAV does not compress, and deflate invites decompression bombs
            max_size=protocol.MAX_METADATA_BYTES,  # until auth; then MAX_AUDIO_BYTES (open_gate)
            max_queue=2,  # two frames make a request; more only buffers memory
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header=None,
        )

    async def handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, GatedConnection)  # listen() makes every connection one
        ws = connection
        record = RequestRecord()
        peer = str(ws.remote_address[0]) if ws.remote_address else "-"
        forwarded = ws.request.headers.get_all("X-Forwarded-For") if ws.request else []
        address = client_address(peer, forwarded, self.config.trusted_proxies)
        if refusal := self._admit(address):
            record.status = Overloaded.code
            await _fail(ws, Overloaded(refusal))
            self.record(record)
            return
        self.metrics.inflight.inc()
        self.open_connections += 1
        try:
            await self._exchange(ws, record, address)
        except AsrError as err:
            record.status = err.code
            await _fail(ws, err)
        except (ConnectionClosed, ClientGone):
            record.status = self._gone_status(ws)
        except Exception:
            log.exception("request %s failed", record.request_id)
            record.status = "internal_error"
            await _fail(ws, InternalError("unexpected server error"))
        finally:
            if not record.authenticated:
                self.pending.release(address)
            self.connections.release(address)
            self.open_connections -= 1
            self.metrics.inflight.dec()
            self.record(record)

    def _admit(self, address: str) -> str | None:
        """Count the connection in (open, and not yet authenticated), or say why it is refused."""
        if refusal := self.connections.admit(address):
            return refusal
        if self.pending.admit(address):
            self.connections.release(address)
            return (f"the server holds its limit of {self.pending.max_total} connections that have "
                    "not yet sent a valid key (MAX_PENDING_CONNECTIONS); try again shortly")
        return None

    def _gone_status(self, ws: ServerConnection) -> str:
        """Why an exchange ended without a frame of ours: from the close frame the library sent, if any."""
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == CLOSE_TOO_BIG:  # a frame over max_size
            return AudioTooLarge.code
        if self.draining and sent is not None and sent.code == CloseCode.GOING_AWAY:
            return CUT_BY_SHUTDOWN
        return CLIENT_GONE

    def record(self, record: RequestRecord) -> None:
        """The one place a request is logged and counted, whatever its outcome; pings are neither."""
        if record.kind == "ping":
            return
        label = self.metrics.guard.label(record.machine_id, record.authenticated)
        self.metrics.observe(record.outcome(label))
        log.info("request", extra={"fields": record.log_fields(label)})

    async def _exchange(self, ws: GatedConnection, record: RequestRecord, address: str) -> None:
        frame = await ws.receive(self.config.metadata_timeout_s, "no metadata frame")
        obj = protocol.parse_metadata(frame)
        if protocol.is_ping(obj):
            record.kind = "ping"
            ws.discard_data()
            await ws.send(protocol.pong_frame())
            await ws.close(CLOSE_NORMAL)
            return
        if not self.keys.allows(obj):
            raise Unauthorized("missing or wrong api_key")
        record.authenticated = True
        self.pending.release(address)
        request = protocol.parse_transcribe(obj)
        record.machine_id = request.machine_id
        record.task, record.language = request.task, request.language or "detect"
        allowance = self.audio_budget.allowance()
        try:
            transcription = await self._receive_and_transcribe(ws, record, request, allowance)
        finally:
            allowance.release()
        record.language = transcription.language or record.language
        await self._reply(ws, request, transcription, record)

    async def _receive_and_transcribe(self, ws: GatedConnection, record: RequestRecord,
                                      request: protocol.TranscribeRequest,
                                      allowance: Allowance) -> protocol.Transcription:
        """Frame 2, held within the audio budget from its header until the transcript is ready."""
        if self.audio_budget.exhausted:  # refused before its audio is read into memory
            raise Overloaded("the server holds its limit of audio in flight; try again shortly")
        # The frame's declared size is reserved before its payload is read (ws_gate).
        ws.open_gate(self.config.effective_max_audio_bytes, allowance.hold)
        log.debug("request %s: metadata accepted, waiting for audio", record.request_id)
        data = await ws.receive(self.config.audio_timeout_s, "no audio frame")
        record.audio_arrived = time.monotonic()
        if isinstance(data, str):
            raise BadRequest("the second frame must be a binary frame holding a WAV file")
        audio = await asyncio.to_thread(decode_wav, data, self.config.max_audio_seconds)
        log.debug("request %s: %d bytes, %d Hz, %d channels, %.2f s", record.request_id, len(data),
                  audio.source_rate, audio.channels, audio.duration_s)
        del data
        if not allowance.hold(audio.samples.nbytes):
            raise Overloaded("the server holds its limit of audio in flight; try again shortly")
        record.audio_s = audio.duration_s
        options = protocol.TranscribeOptions(language=request.language, task=request.task,
                                             prompt=request.prompt, word_timestamps=request.word_timestamps)
        return await self._transcribe(ws, audio.samples, options)

    async def _reply(self, ws: ServerConnection, request: protocol.TranscribeRequest,
                     transcription: protocol.Transcription, record: RequestRecord) -> None:
        corrected = await self.postprocess(transcription, request.postprocess, request.task, record)
        await ws.send(protocol.result_frame(transcription, corrected))
        await ws.close(CLOSE_NORMAL)

    async def postprocess(self, transcription: protocol.Transcription, wanted: bool | None, task: str,
                          record: RequestRecord) -> protocol.PostprocessOutcome:
        """The LLM's correction if the request (or, when it does not say, the server) wants one."""
        if not (wanted if wanted is not None else self.config.postprocess_default):
            return protocol.PostprocessOutcome()
        # The Whisper worker is already free: the LLM call holds only this connection.
        language = "en" if task == "translate" else transcription.language
        corrected = await self.postprocessor.correct(transcription.text, language)
        if corrected.called:
            record.postprocess_s = corrected.ms / 1000
        return corrected

    async def _transcribe(self, ws: ServerConnection, samples: Any, options: protocol.TranscribeOptions
                          ) -> protocol.Transcription:
        """Run on the scheduler, but give up (and free the queue slot) if the client leaves."""
        work = asyncio.ensure_future(self.scheduler.submit(samples, options))
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await asyncio.wait({work, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not work.done():
            work.cancel()
            raise ClientGone()
        return work.result()


async def _fail(ws: GatedConnection, err: AsrError) -> None:
    """Send the error frame and close with the error's code; the client may already be gone."""
    ws.discard_data()  # whatever the client still sends is dropped, but its close frame
    try:
        await ws.send(protocol.error_frame(err))
        await ws.close(err.close_code, err.code)
    except ConnectionClosed:
        pass

