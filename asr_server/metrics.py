"""Prometheus metrics: the spec's four, a few extra ``asr_`` ones, and the machine_id label guard.

The spec's metrics carry a ``machine_id`` label that clients choose, so it is
guarded: only an authenticated request's id becomes a label, only if it looks
like an id (hex, at most 64 characters, lowercased), and only the first
``cap`` distinct ids; later ones count as ``other``. Each id costs about 86
series (requests: 2 tasks x 10 statuses; audio: 2; two histograms of 16
series x 2 tasks), so the default cap of 2,000 bounds these metrics at about
172,000 series. The registry is injectable so tests use their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Speech work: from a short clip on a GPU (~50 ms) to half an hour of audio on a CPU.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LIVE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

UNAUTHENTICATED = "unauthenticated"
INVALID = "invalid"
UNKNOWN = "unknown"
OTHER = "other"
_ID = re.compile(r"[0-9a-f]{1,64}")


class MachineIdGuard:
    """Turns a client's machine_id into a bounded set of label values."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()

    def label(self, machine_id: str | None, authenticated: bool) -> str:
        if not authenticated:
            return UNAUTHENTICATED
        if machine_id is None or machine_id == UNKNOWN:
            return UNKNOWN
        candidate = machine_id.lower()
        if not _ID.fullmatch(candidate):
            return INVALID
        if candidate in self._seen:
            return candidate
        if len(self._seen) >= self.cap:
            return OTHER
        self._seen.add(candidate)
        return candidate

    @property
    def distinct(self) -> int:
        return len(self._seen)


@dataclass(frozen=True)
class RequestOutcome:
    """One finished request, as the metrics see it."""

    machine_id: str  # already guarded
    task: str
    status: str  # "ok" or an error code
    audio_seconds: float
    processing_seconds: float | None  # None: the audio never arrived
    postprocess_seconds: float | None = None  # None: no LLM call was made


class Metrics:
    """Every metric the server exports, in one registry."""

    def __init__(self, registry: CollectorRegistry, machine_id_cap: int) -> None:
        self.registry = registry
        self.guard = MachineIdGuard(machine_id_cap)
        labels = ("machine_id", "task")
        self.requests = Counter("asr_requests_total", "Total request count",
                                (*labels, "status"), registry=registry)
        self.audio_seconds = Counter("asr_audio_seconds_total", "Audio duration processed",
                                     labels, registry=registry)
        self.processing_seconds = Histogram("asr_processing_seconds", "End-to-end processing latency",
                                            labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.postprocess_seconds = Histogram("asr_postprocess_seconds", "LLM post-processing latency",
                                             labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.inflight = Gauge("asr_inflight_requests", "Transcribe requests being handled now",
                              registry=registry)
        self.pending_connections = Gauge("asr_pending_connections",
                                         "Connections that have not yet passed the key check",
                                         registry=registry)
        self.queue_depth = Gauge("asr_queue_depth", "Requests waiting for the inference worker",
                                 registry=registry)
        self.batch_size = Histogram("asr_batch_size",
                                    "Requests carried by each decoder pass (one at ASR_MAX_BATCH=1)",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.model_load_seconds = Gauge("asr_model_load_seconds", "Seconds the model took to load",
                                        registry=registry)
        self.model_info = Info("asr_model", "The loaded model", registry=registry)
        self.ready = Gauge("asr_ready", "1 when /health says ok", registry=registry)
        self.kv_cache_bytes = Gauge("asr_kv_cache_bytes",
                                    "Bytes of the decoder's cache, reserved once at start", registry=registry)
        self.live_sessions = Gauge("asr_live_sessions", "Live dictation sessions open now (/v1/realtime)",
                                   registry=registry)
        self.live_commit_lag = Histogram("asr_live_commit_lag_seconds",
                                         "From a committed word's audio arriving to its delta being sent",
                                         buckets=LIVE_BUCKETS, registry=registry)
        self.live_final_latency = Histogram("asr_live_final_latency_seconds",
                                            "From the end of an item's speech (or its commit) to completed",
                                            buckets=LIVE_BUCKETS, registry=registry)
        self.event_loop_lag = Histogram("asr_event_loop_lag_seconds",
                                        "How late the event loop ran a timer (blocked loop)",
                                        buckets=LAG_BUCKETS, registry=registry)

    def observe(self, outcome: RequestOutcome) -> None:
        labels = (outcome.machine_id, outcome.task)
        self.requests.labels(*labels, outcome.status).inc()
        if outcome.status == "ok":
            self.audio_seconds.labels(*labels).inc(outcome.audio_seconds)
        if outcome.processing_seconds is not None:
            self.processing_seconds.labels(*labels).observe(outcome.processing_seconds)
        if outcome.postprocess_seconds is not None:
            self.postprocess_seconds.labels(*labels).observe(outcome.postprocess_seconds)
