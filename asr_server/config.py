"""The server's settings: one frozen Config, read once from the environment and passed down.

Every variable has a default and a line in the README. ``Config.from_env``
collects every mistake at once and raises ``ConfigError`` with one line per
mistake, so a bad ``EnvironmentFile`` is fixed in one go.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from asr_server.precision_names import PRECISION_RULE, PRECISION_SETTINGS, with_replaced_names

# Where `make model` writes checkpoints and where ASR_MODEL names are looked up (the repository's
# models/, beside the package).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES``: comma-separated addresses or CIDR networks; raises ValueError."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DEVICES = ("auto", "cpu", "cuda")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# The largest WAV the spec allows (mono, Float32 or Int16) at 48 kHz, the highest common
# capture rate, for the longest audio allowed, plus room for headers: MAX_AUDIO_BYTES's default.
_DEFAULT_BYTES_PER_SECOND = 48_000 * 4
_HEADER_ALLOWANCE = 64 * 1024
# MAX_PENDING_CONNECTIONS's default: one per 64 MiB of memory (a pending connection holds at
# most its metadata and one socket read, about 0.4 MiB: docs/reliability.md), within bounds.
_MEMORY_PER_PENDING_CONNECTION = 64 << 20
_PENDING_BOUNDS = (64, 4096)


class ConfigError(ValueError):
    """One or more settings are wrong; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    """All settings, with units in the names."""

    host: str = "0.0.0.0"
    port: int = 8765
    http_port: int = 8767  # the OpenAI-compatible HTTP API, on HOST like the WebSocket port
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed
    allow_no_auth: bool = False
    model: str = "base"
    device: str = "auto"
    beam_size: int = 5
    threads: int = 0  # 0: one per core
    vad: bool = True
    precision: str = "auto"  # auto | exact | int8 | bfloat16 | float16 (engine/model_loading.py)
    max_queue: int = 32
    max_batch: int = 8
    cuda_graphs: bool = True  # replay captured decoder passes on CUDA (engine/cuda_graphs.py)
    queue_deadline_s: float = 300.0
    max_audio_seconds: float = 1800.0
    max_audio_bytes: int = 0  # 0: derived from max_audio_seconds
    max_inflight_audio_bytes: int = 1 << 30  # all requests' audio held at once
    max_connections: int = 0  # 0: no limit (nginx limits at the edge)
    max_connections_per_ip: int = 0  # 0: no limit
    max_pending_connections: int = 0  # not yet authenticated; 0: sized for the host's memory
    trusted_proxies: tuple[Network, ...] = ()  # X-Forwarded-For is believed only from these
    metadata_timeout_s: float = 10.0
    audio_timeout_s: float = 30.0
    shutdown_grace_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8766  # 9090 is Prometheus' own
    metrics_max_machine_ids: int = 2000
    log_level: str = "INFO"
    log_format: str = "text"
    postprocess_url: str = ""  # base URL ending in /v1; empty: no post-processing
    postprocess_model: str = "default"
    postprocess_api_key: str = field(default="", repr=False)  # never printed
    postprocess_timeout_s: float = 10.0  # the LLM call alone
    postprocess_default: bool = False
    postprocess_max_concurrency: int = 4
    postprocess_slot_wait_s: float = 10.0  # the wait for one of those slots, before the call
    max_live_sessions: int = 4  # /v1/realtime sessions open at once (live_session.py)
    live_max_session_s: float = 3600.0
    live_idle_timeout_s: float = 60.0  # no event from the client for this long ends the session
    live_max_buffer_s: float = 30.0  # an item's audio not yet final; past it the server says it is behind
    live_beam_size: int = 0  # a live item's decodes: 0 is ASR_BEAM_SIZE's (beam 5 costs greedy's time here)
    live_fit_window: bool = True  # a live decode's encoder window fitted to its audio (docs/live.md)

    @property
    def effective_max_audio_bytes(self) -> int:
        if self.max_audio_bytes:
            return self.max_audio_bytes
        return int(self.max_audio_seconds * _DEFAULT_BYTES_PER_SECOND) + _HEADER_ALLOWANCE

    @property
    def effective_max_pending_connections(self) -> int:
        if self.max_pending_connections:
            return self.max_pending_connections
        low, high = _PENDING_BOUNDS
        return max(low, min(high, _physical_memory_bytes() // _MEMORY_PER_PENDING_CONNECTION))

    @property
    def model_path(self) -> Path:
        """``ASR_MODEL`` is a checkpoint path, or a name under ``models/``."""
        if os.sep in self.model or self.model.endswith(".pt"):
            return Path(self.model)
        return MODELS_DIR / f"{self.model}.pt"

    @property
    def torch_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        reader = _Reader(env)
        defaults = cls()
        keys = tuple(k.strip() for k in env.get("SERVER_API_KEY", "").split(",") if k.strip())
        config = cls(
            host=reader.get("HOST", str, defaults.host, lambda v: bool(v.strip()), "must not be empty"),
            port=reader.get("PORT", int, defaults.port, lambda v: 0 <= v <= 65535, "must be 0..65535"),
            http_port=reader.get("HTTP_PORT", int, defaults.http_port, lambda v: 0 <= v <= 65535,
                                 "must be 0..65535"),
            api_keys=keys,
            allow_no_auth=reader.boolean("ALLOW_NO_AUTH", defaults.allow_no_auth),
            model=reader.get("ASR_MODEL", str, defaults.model, lambda v: bool(v), "must not be empty"),
            device=reader.get("ASR_DEVICE", str, defaults.device, _valid_device,
                              "must be auto, cpu, cuda or cuda:N"),
            beam_size=reader.get("ASR_BEAM_SIZE", int, defaults.beam_size, lambda v: 1 <= v <= 16,
                                 "must be 1 (greedy) .. 16"),
            threads=reader.get("ASR_THREADS", int, defaults.threads, lambda v: 0 <= v <= 1024,
                               "must be 0 (one per core) .. 1024"),
            vad=reader.boolean("ASR_VAD", defaults.vad),
            precision=reader.precision(defaults.precision),
            max_queue=reader.get("ASR_MAX_QUEUE", int, defaults.max_queue, lambda v: v >= 1,
                                 "must be at least 1"),
            max_batch=reader.get("ASR_MAX_BATCH", int, defaults.max_batch, lambda v: 1 <= v <= 256,
                                 "must be 1..256"),
            cuda_graphs=reader.boolean("ASR_CUDA_GRAPHS", defaults.cuda_graphs),
            queue_deadline_s=reader.get("ASR_QUEUE_DEADLINE_S", float, defaults.queue_deadline_s,
                                        lambda v: 0 < v <= 86_400, "must be in (0, 86400]"),
            max_audio_seconds=reader.get("MAX_AUDIO_SECONDS", float, defaults.max_audio_seconds,
                                         lambda v: 0 < v <= 86_400, "must be in (0, 86400]"),
            max_audio_bytes=reader.get("MAX_AUDIO_BYTES", int, defaults.max_audio_bytes,
                                       lambda v: v == 0 or v >= 1024, "must be 0 (derived) or >= 1024"),
            max_inflight_audio_bytes=reader.get(
                "MAX_INFLIGHT_AUDIO_BYTES", int, defaults.max_inflight_audio_bytes,
                lambda v: v >= 1024 * 1024, "must be at least 1048576 (1 MiB)"),
            max_connections=reader.get("MAX_CONNECTIONS", int, defaults.max_connections,
                                       lambda v: v >= 0, "must be 0 (no limit) or more"),
            max_connections_per_ip=reader.get("MAX_CONNECTIONS_PER_IP", int, defaults.max_connections_per_ip,
                                              lambda v: v >= 0, "must be 0 (no limit) or more"),
            max_pending_connections=reader.get(
                "MAX_PENDING_CONNECTIONS", int, defaults.max_pending_connections,
                lambda v: 0 <= v <= 1_000_000, "must be 0 (sized for the host) .. 1000000"),
            trusted_proxies=reader.get("TRUSTED_PROXIES", parse_networks, defaults.trusted_proxies,
                                       lambda v: True, "", kind="comma-separated list of addresses or CIDRs"),
            metadata_timeout_s=reader.get("METADATA_TIMEOUT_S", float, defaults.metadata_timeout_s,
                                          lambda v: 0 < v <= 3600, "must be in (0, 3600]"),
            audio_timeout_s=reader.get("AUDIO_TIMEOUT_S", float, defaults.audio_timeout_s,
                                       lambda v: 0 < v <= 3600, "must be in (0, 3600]"),
            shutdown_grace_s=reader.get("SHUTDOWN_GRACE_S", float, defaults.shutdown_grace_s,
                                        lambda v: 0 <= v <= 3600, "must be in [0, 3600]"),
            metrics_host=reader.get("METRICS_HOST", str, defaults.metrics_host, lambda v: bool(v.strip()),
                                    "must not be empty"),
            metrics_port=reader.get("METRICS_PORT", int, defaults.metrics_port, lambda v: 0 <= v <= 65535,
                                    "must be 0..65535"),
            metrics_max_machine_ids=reader.get(
                "METRICS_MAX_MACHINE_IDS", int, defaults.metrics_max_machine_ids,
                lambda v: 0 <= v <= 1_000_000, "must be 0..1000000"),
            log_format=reader.get("LOG_FORMAT", str.lower, defaults.log_format,
                                  lambda v: v in ("text", "json"), "must be text or json"),
            postprocess_url=reader.get("POSTPROCESS_URL", lambda v: v.rstrip("/"), defaults.postprocess_url,
                                       _valid_llm_url, "must be an http(s) base URL ending in /v1"),
            postprocess_model=reader.get("POSTPROCESS_MODEL", str, defaults.postprocess_model,
                                         lambda v: bool(v), "must not be empty"),
            postprocess_api_key=env.get("POSTPROCESS_API_KEY", "").strip(),
            postprocess_timeout_s=reader.get("POSTPROCESS_TIMEOUT_S", float, defaults.postprocess_timeout_s,
                                             lambda v: 0 < v <= 600, "must be in (0, 600]"),
            postprocess_default=reader.boolean("POSTPROCESS_DEFAULT", defaults.postprocess_default),
            postprocess_max_concurrency=reader.get(
                "POSTPROCESS_MAX_CONCURRENCY", int, defaults.postprocess_max_concurrency,
                lambda v: 1 <= v <= 1024, "must be 1..1024"),
            postprocess_slot_wait_s=reader.get(
                "POSTPROCESS_SLOT_WAIT_S", float, defaults.postprocess_slot_wait_s,
                lambda v: 0 <= v <= 600, "must be in [0, 600]"),
            max_live_sessions=reader.get("MAX_LIVE_SESSIONS", int, defaults.max_live_sessions,
                                         lambda v: 0 <= v <= 10_000, "must be 0 (none) .. 10000"),
            live_max_session_s=reader.get("LIVE_MAX_SESSION_S", float, defaults.live_max_session_s,
                                          lambda v: 0 < v <= 86_400, "must be in (0, 86400]"),
            live_idle_timeout_s=reader.get("LIVE_IDLE_TIMEOUT_S", float, defaults.live_idle_timeout_s,
                                           lambda v: 0 < v <= 3600, "must be in (0, 3600]"),
            live_max_buffer_s=reader.get("LIVE_MAX_BUFFER_S", float, defaults.live_max_buffer_s,
                                         lambda v: 10 <= v <= 600, "must be in [10, 600]"),
            live_beam_size=reader.get("LIVE_BEAM_SIZE", int, defaults.live_beam_size, lambda v: 0 <= v <= 5,
                                      "must be 0 (ASR_BEAM_SIZE's), 1 (greedy) .. 5"),
            live_fit_window=reader.boolean("LIVE_FIT_WINDOW", defaults.live_fit_window),
            log_level=reader.get("LOG_LEVEL", str.upper, defaults.log_level,
                                 lambda v: v in _LOG_LEVELS, f"must be one of {', '.join(_LOG_LEVELS)}"),
        )
        if not config.api_keys and not config.allow_no_auth and not is_loopback(config.host):
            reader.problems.append(
                f"HOST={config.host} is reachable from other machines but SERVER_API_KEY is not set: "
                "set a key, or ALLOW_NO_AUTH=1 if an open server is meant"
            )
        if config.max_inflight_audio_bytes < config.effective_max_audio_bytes:
            reader.problems.append(
                f"MAX_INFLIGHT_AUDIO_BYTES={config.max_inflight_audio_bytes} is below one largest request "
                f"({config.effective_max_audio_bytes} bytes, MAX_AUDIO_BYTES): no such request could run"
            )
        if reader.problems:
            raise ConfigError(reader.problems)
        return config


class _Reader:
    """Parses variables, collecting a problem line per bad value instead of stopping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def get(self, name: str, parse: Callable[[str], T], default: T,
            valid: Callable[[T], bool], rule: str, kind: str = "") -> T:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = parse(raw.strip())
        except ValueError:
            self.problems.append(f"{name}={raw!r}: not a valid {kind or getattr(parse, '__name__', 'value')}")
            return default
        if not valid(value):
            self.problems.append(f"{name}={raw!r}: {rule}")
            return default
        return value

    def precision(self, default: str) -> str:
        precision = self.get("ASR_PRECISION", str.lower, default, lambda v: v in PRECISION_SETTINGS,
                             PRECISION_RULE)
        return with_replaced_names(self.env, precision, self.problems)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        self.problems.append(f"{name}={raw!r}: must be true or false (also 1/0, yes/no, on/off)")
        return default


def _valid_device(value: str) -> bool:
    if value in _DEVICES:
        return True
    prefix, _, index = value.partition(":")
    return prefix == "cuda" and index.isdigit()


def _valid_llm_url(value: str) -> bool:
    return value.startswith(("http://", "https://")) and value.endswith("/v1")


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on this platform: size for a small host
        return 4 << 30


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
