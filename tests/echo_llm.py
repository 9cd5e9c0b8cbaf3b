"""An instrument, not a model: a chat-completions endpoint that answers the transcript back, lightly edited.

No LLM that runs here can correct a 30-minute transcript (SmolLM2's context
is 8k tokens), yet the post-processing guard's cost only shows on a reply as
long as the transcript that passes its early checks. This endpoint gives
exactly that reply: the transcript with each sentence's first letter
capitalised and its last character dropped when it is a full stop. It is used
where the measure is the server's event loop, never where the measure is
the quality of a correction (tests/test_postprocess.py runs a real LLM).
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from aiohttp import web

_FENCE = re.compile(r"<transcript>\n?(.*?)\n?</transcript>", re.S)


def lightly_edited(text: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(s[:1].upper() + s[1:] for s in sentences)


class EchoLlm:
    """Serves ``/v1/chat/completions`` on 127.0.0.1 from a thread of its own; a context manager."""

    def __init__(self) -> None:
        self.port = 0
        self.calls = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _complete(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        self.calls += 1
        fenced = _FENCE.search(body["messages"][-1]["content"])
        content = lightly_edited(fenced[1]) if fenced else ""
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = int(self._runner.addresses[0][1])
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> EchoLlm:
        threading.Thread(target=self._serve, daemon=True).start()
        self._started.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
