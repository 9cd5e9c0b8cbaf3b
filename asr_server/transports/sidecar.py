"""The operator's port: ``/health`` and ``/metrics`` over aiohttp on METRICS_HOST:METRICS_PORT.

Kept off the public WebSocket port (default 127.0.0.1:8766) so metrics are
not exposed to clients; nginx publishes them to an allow-list. ``/health``
means the same as on port 8765. ``/metrics`` is serialised off the event loop:
at the ``machine_id`` cap it is about 170,000 lines, seconds of Python, and
concurrent scrapes share one serialisation. That serialisation still holds
the GIL, so a scrape reuses the last one until ``SCRAPE_COOLDOWN`` times its
cost has passed: however often it is scraped, serialising takes at most a
fifth of the process's time (a small registry's takes milliseconds, so it is
fresh for milliseconds).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthCheck = Callable[[], tuple[int, dict[str, Any]]]
SCRAPE_COOLDOWN = 4.0


class Sidecar:
    """A small aiohttp app; ``start`` binds and returns the port it got."""

    def __init__(self, health: HealthCheck, registry: CollectorRegistry) -> None:
        self._health = health
        self._registry = registry
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        self._scrape: asyncio.Future[bytes] | None = None
        self._fresh_until = 0.0  # loop time until which the last serialisation is served again

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _serialise(self) -> bytes:
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = await asyncio.to_thread(generate_latest, self._registry)
        self._fresh_until = loop.time() + SCRAPE_COOLDOWN * (loop.time() - started)
        return body

    async def _get_health(self, request: web.Request) -> web.Response:
        status, body = self._health()
        return web.Response(status=status, text=json.dumps(body) + "\n", content_type="application/json")

    async def _get_metrics(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        if self._scrape is None or (self._scrape.done() and now >= self._fresh_until):
            self._scrape = asyncio.ensure_future(self._serialise())
        body = await asyncio.shield(self._scrape)  # a scraper that leaves does not cancel the others'
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
