"""The request service: what every transport shares, from the key to the one log line.

A transport (``transports/``) owns its sockets and its wire format; it hands
this service everything else: the key check (constant time), admission
(connection caps, the connections still without a key, the audio budget),
decoding the audio off the event loop, submission to the scheduler,
post-processing, health, and the one log line and metrics record per
request, written here whatever the outcome. Nothing here knows of a socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asr_server.admission import Allowance, AudioBudget, ConnectionLimiter, KeyRing
from asr_server.config import Config
from asr_server.contract.domain import PostprocessOutcome, Segment, TranscribeOptions, Transcription
from asr_server.contract.errors import Overloaded
from asr_server.engine.audio_decoding import DecodedAudio, decode_audio, decode_wav
from asr_server.engine.job import UNCHECKED, Speech
from asr_server.engine.scheduler import Scheduler
from asr_server.metrics import Metrics, RequestOutcome
from asr_server.postprocess.llm_client import PostProcessor

log = logging.getLogger(__name__)

CLIENT_GONE = "client_gone"  # statuses of requests that ended without a frame of ours
CUT_BY_SHUTDOWN = "shutdown"  # still running when SIGTERM's grace period ended
LIVE_SESSION = "live_session"  # a live connection: its items are logged and counted, not it
_BUDGET_FULL = "the server holds its limit of audio in flight; try again shortly"


@dataclass
class RequestRecord:
    """What the request log line and the metrics say; filled in by the transport as the exchange goes."""

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


class AsrService:
    """One scheduler, its limits, keys, metrics and post-processor, handed to every transport."""

    def __init__(self, config: Config, scheduler: Scheduler, metrics: Metrics,
                 postprocessor: PostProcessor) -> None:
        self.config = config
        self.scheduler = scheduler
        self.metrics = metrics
        self.postprocessor = postprocessor
        self.keys = KeyRing(config.api_keys)
        self.connections = ConnectionLimiter(config.max_connections, config.max_connections_per_ip)
        self.audio_budget = AudioBudget(config.max_inflight_audio_bytes)
        self.pending = ConnectionLimiter(config.effective_max_pending_connections)  # before auth
        self.open_connections = 0  # WebSocket connections open now (the heap's give-back watches it)
        self.draining = False

    # -- health -----------------------------------------------------------------------------------

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

    # -- admission --------------------------------------------------------------------------------

    def admit(self, address: str, before_key: bool = False) -> str | None:
        """Count a request's connection in, or say why it is refused.

        ``before_key``: it also takes one of the ``MAX_PENDING_CONNECTIONS`` places until
        ``key_passed``; a transport that checks the key before reading anything does not.
        """
        if refusal := self.connections.admit(address):
            return refusal
        if before_key and self.pending.admit(address):
            self.connections.release(address)
            return (f"the server holds its limit of {self.pending.max_total} connections that have "
                    "not yet sent a valid key (MAX_PENDING_CONNECTIONS); try again shortly")
        self.metrics.inflight.inc()
        return None

    def key_passed(self, address: str) -> None:
        self.pending.release(address)

    def leave(self, address: str, record: RequestRecord, before_key: bool = False) -> None:
        """The request is over: its places are free, and it is logged and counted."""
        if before_key and not record.authenticated:
            self.pending.release(address)
        self.connections.release(address)
        self.metrics.inflight.dec()
        self.record(record)

    def allows(self, key: object) -> bool:
        """The key, compared in constant time against every configured one."""
        return self.keys.allows(key)

    def allowance(self) -> Allowance:
        """A request's share of the audio budget, refused at once when none is left."""
        if self.audio_budget.exhausted:  # refused before its audio is read into memory
            raise Overloaded(_BUDGET_FULL)
        return self.audio_budget.allowance()

    # -- audio, model, LLM ------------------------------------------------------------------------

    async def decode(self, data: bytes | bytearray, record: RequestRecord, allowance: Allowance,
                     any_format: bool = False) -> DecodedAudio:
        """The upload's samples (decoded off the event loop), held in the audio budget."""
        decoder = decode_audio if any_format else decode_wav
        audio = await asyncio.to_thread(decoder, data, self.config.max_audio_seconds)
        log.debug("request %s: %d bytes, %d Hz, %d channels, %.2f s", record.request_id, len(data),
                  audio.source_rate, audio.channels, audio.duration_s)
        if not allowance.hold(audio.samples.nbytes):
            raise Overloaded(_BUDGET_FULL)
        record.audio_s = audio.duration_s
        return audio

    async def transcribe(self, samples: np.ndarray, options: TranscribeOptions,
                         listener: Callable[[list[Segment]], None] | None = None,
                         speech: Speech = UNCHECKED) -> Transcription:
        """The scheduler's answer; cancelling the awaiting task takes the request out of the queue,
        its speech gate and the decoding loop."""
        return await self.scheduler.submit(samples, options, listener, speech)

    async def postprocess(self, transcription: Transcription, wanted: bool | None, task: str,
                          record: RequestRecord) -> PostprocessOutcome:
        """The LLM's correction if the request (or, when it does not say, the server) wants one."""
        if not (wanted if wanted is not None else self.config.postprocess_default):
            return PostprocessOutcome()
        # The Whisper worker is already free: the LLM call holds only this request.
        language = "en" if task == "translate" else transcription.language
        corrected = await self.postprocessor.correct(transcription.text, language)
        if corrected.called:
            record.postprocess_s = corrected.ms / 1000
        return corrected

    # -- the record -------------------------------------------------------------------------------

    def record(self, record: RequestRecord) -> None:
        """The one place a request is logged and counted, whatever its outcome; pings are neither."""
        if record.kind in ("ping", LIVE_SESSION):
            return
        label = self.metrics.guard.label(record.machine_id, record.authenticated)
        self.metrics.observe(record.outcome(label))
        log.info("request", extra={"fields": record.log_fields(label)})
