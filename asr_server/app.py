"""Lifecycle: start the worker (which loads the model), serve, watch the worker, drain on SIGTERM.

The port opens before the model is loaded so that ``/health`` can say 503
while it loads. SIGTERM or SIGINT: ``/health`` turns 503, the listener
closes, in-flight requests get ``SHUTDOWN_GRACE_S`` to finish, then the
remaining connections are closed with 1001 and the process exits 0. A dead
worker thread exits the process non-zero, so systemd restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from prometheus_client import CollectorRegistry
from websockets.frames import CloseCode

from asr_server.config import Config
from asr_server.engine.scheduler import Scheduler
from asr_server.engine.transcriber import Engine, EngineSettings
from asr_server.heap import give_back
from asr_server.metrics import Metrics
from asr_server.postprocess.llm_client import PostProcessor
from asr_server.service import AsrService
from asr_server.transports.openai_http import HttpApi
from asr_server.transports.sidecar import Sidecar
from asr_server.transports.websocket import WebSocketTransport

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_LOAD_FAILED = 1
EXIT_WORKER_DIED = 70  # EX_SOFTWARE
WATCH_INTERVAL_S = 0.25  # how often the worker is checked and the event loop's lag measured
GIVE_BACK_INTERVAL_S = 10.0  # under steady traffic, how often freed memory is returned
# How long a thread running Python (a /metrics serialisation, the post-processing guard) may
# keep the GIL while the event loop waits for it: CPython's default is 5 ms, and an exchange
# takes several loop wake-ups. Under back-to-back scrapes at the label cap, ping p99 was 53-59 ms
# at 1 ms and 29-31 ms at 0.5 ms with scrapes reused (docs/reliability.md). torch releases the
# GIL in its ops.
GIL_SWITCH_INTERVAL_S = 0.0005


def engine_settings(config: Config) -> EngineSettings:
    return EngineSettings(
        model_path=config.model_path,
        device=config.device,
        threads=config.torch_threads,
        beam_size=config.beam_size,
        vad=config.vad,
        precision=config.precision,
        max_batch=config.max_batch,
        cuda_graphs=config.cuda_graphs,
    )


def load_engine(settings: EngineSettings) -> Engine:
    engine = Engine(settings)
    engine.warm_up()
    return engine


def notify_systemd(state: str) -> None:
    """sd_notify(3) without a library: one datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def describe_model(metrics: Metrics, scheduler: Scheduler, config: Config) -> None:
    engine = scheduler.engine
    if isinstance(engine, Engine):
        metrics.model_load_seconds.set(engine.load_seconds)
        metrics.kv_cache_bytes.set(engine.cache_bytes)
        metrics.model_info.info({"name": config.model, "device": str(engine.device),
                                 "dtype": str(engine.dtype).removeprefix("torch."),
                                 "precision": engine.precision})


class MemoryReturn:
    """Returns freed memory after traffic: when the last connection closes, and every so often under load."""

    def __init__(self, service: AsrService) -> None:
        self._service = service
        self._seen_traffic = False
        self._last = 0.0

    async def maybe_give_back(self, now: float) -> None:
        open_now = self._service.open_connections + self._service.pending.total
        self._seen_traffic |= open_now > 0
        if not self._seen_traffic:
            return
        if open_now == 0 or now - self._last >= GIVE_BACK_INTERVAL_S:
            self._seen_traffic, self._last = open_now > 0, now
            await asyncio.to_thread(give_back)


async def run(config: Config) -> int:
    log.debug("config: %r", config)  # the keys are left out of the repr
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    settings = engine_settings(config)
    metrics = Metrics(CollectorRegistry(), config.metrics_max_machine_ids)
    scheduler = Scheduler(lambda: load_engine(settings), config.max_queue, config.max_batch,
                          config.queue_deadline_s, metrics.batch_size.observe)
    postprocessor = PostProcessor.from_config(config)
    service = AsrService(config, scheduler, metrics, postprocessor)
    metrics.queue_depth.set_function(lambda: scheduler.depth)
    metrics.pending_connections.set_function(lambda: service.pending.total)
    metrics.ready.set_function(service.ready)
    scheduler.start()
    transport = WebSocketTransport(service)
    ws_server = await transport.listen()
    port = ws_server.sockets[0].getsockname()[1]
    sidecar = Sidecar(service.health, metrics.registry)
    metrics_port = await sidecar.start(config.metrics_host, config.metrics_port)
    http_api = HttpApi(service, config.model)
    http_port = await http_api.start(config.host, config.http_port)
    transport.live_port = http_port
    log.info("listening on ws://%s:%d/ws/transcribe (model loading)", config.host, port)
    log.info("OpenAI-compatible API on http://%s:%d/v1/audio/transcriptions", config.host, http_port)
    log.info("metrics on http://%s:%d/metrics", config.metrics_host, metrics_port)
    if not config.api_keys:
        log.warning("no SERVER_API_KEY: anyone who can reach this port may use it")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ready = asyncio.ensure_future(scheduler.wait_ready())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.exception() is not None:
        log.error("model failed to load: %s", ready.exception())
        ws_server.close()
        await ws_server.wait_closed()
        await http_api.stop()
        await sidecar.stop()
        return EXIT_LOAD_FAILED
    if ready.done():
        describe_model(metrics, scheduler, config)
        notify_systemd("READY=1")
        log.info("ready: http://%s:%d/health", config.host, port)

    code = EXIT_OK
    memory = MemoryReturn(service)
    while not stop.is_set():
        woke_at = loop.time() + WATCH_INTERVAL_S
        try:
            await asyncio.wait_for(stop.wait(), timeout=WATCH_INTERVAL_S)
        except TimeoutError:
            # How late this wake-up came is how long something held the event loop.
            metrics.event_loop_lag.observe(max(0.0, loop.time() - woke_at))
            if scheduler.ready and not scheduler.alive:
                log.error("the inference worker thread died; exiting so the service is restarted")
                code = EXIT_WORKER_DIED
                break
            await memory.maybe_give_back(loop.time())

    service.draining = True
    notify_systemd("STOPPING=1")
    log.info("draining: %d connections, grace %g s", len(ws_server.connections),
             config.shutdown_grace_s)
    ws_server.close(close_connections=False)
    # aiohttp's cleanup stops listening and gives requests in flight the same grace.
    http_stopped = asyncio.ensure_future(http_api.stop())
    try:
        await asyncio.wait_for(asyncio.shield(ws_server.wait_closed()), config.shutdown_grace_s)
    except TimeoutError:
        # The server's close is under way already, so a second close() would be ignored:
        # each connection still open is closed here, with 1001 (going away).
        log.warning("grace period over: closing %d connections", len(ws_server.connections))
        cut = [connection.close(CloseCode.GOING_AWAY) for connection in ws_server.connections]
        await asyncio.gather(*cut)
        await ws_server.wait_closed()
    await http_stopped
    if not ready.done():
        ready.cancel()
    await scheduler.stop()
    await postprocessor.close()
    await sidecar.stop()
    log.info("stopped")
    return code
