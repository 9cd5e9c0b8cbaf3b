"""Live dictation on the HTTP port: ``GET /v1/realtime?intent=transcription``, OpenAI's Realtime API.

Before the upgrade: the intent (transcription only), the key (``Authorization:
Bearer`` or the ``openai-insecure-api-key.<key>`` subprotocol browsers send,
constant time; a wrong one is a 401 and no WebSocket), and the connection
caps. Aiohttp holds a connection to its headers until then, under the HTTP
port's cap on connections (the pre-auth memory bound). After it: a session
over ``MAX_LIVE_SESSIONS`` hears ``overloaded`` in an ``error`` event and
the close 1013; ``LIVE_IDLE_TIMEOUT_S`` without an event, or
``LIVE_MAX_SESSION_S`` in all, ends the session with a ``timeout`` error event.

Each text frame is one client event (``contract/realtime_events.py``); a
binary frame is raw s16le at the session's rate (our extension). Audio is
turned into 16 kHz samples and VAD frames off the loop (``engine/live_audio.py``),
one append at a time per session, and handed to the session
(``live_session.py``), which decodes and answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import WSMsgType, web

from asr_server.admission import client_address
from asr_server.contract import realtime_events as events
from asr_server.contract.errors import AsrError, BadRequest, Overloaded, Unauthorized
from asr_server.contract.openai_formats import error_body, error_headers
from asr_server.engine.live_audio import LiveInput
from asr_server.engine.vad import StreamingVad
from asr_server.live_session import LiveSession
from asr_server.service import LIVE_SESSION, AsrService, RequestRecord

log = logging.getLogger(__name__)

KEY_PROTOCOL = "openai-insecure-api-key."
# One event: 10 s of 24 kHz s16le in base64 is 640 KB; OpenAI allows 15 MiB. A bigger frame is closed 1009.
MAX_EVENT_BYTES = 16 << 20
CLOSE_TRY_AGAIN_LATER = 1013


class RealtimeEndpoint:
    def __init__(self, service: AsrService) -> None:
        self.service = service
        self.config = service.config
        self.sessions = 0
        self._vad_model: Any = None
        # One thread for every session's audio: a few ms per second of audio, kept off the VAD gate
        # of file requests (whose long uploads would hold up live frames).
        self._audio = ThreadPoolExecutor(1, thread_name_prefix="asr-live")

    def route(self) -> web.RouteDef:
        return web.get("/v1/realtime", self.handle)

    def _key(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if protocol.strip().startswith(KEY_PROTOCOL):
                return protocol.strip()[len(KEY_PROTOCOL):]
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("intent") != "transcription":
            return _refuse(BadRequest("this server serves transcription sessions only: "
                                      "/v1/realtime?intent=transcription"))
        if not self.service.allows(self._key(request)):
            return _refuse(Unauthorized("missing or wrong API key (Authorization: Bearer ..., or the "
                                        "openai-insecure-api-key subprotocol)"))
        address = client_address(request.remote or "-", request.headers.getall("X-Forwarded-For", []),
                                 self.config.trusted_proxies)
        if refusal := self.service.admit(address):
            return _refuse(Overloaded(refusal))
        record = RequestRecord(kind=LIVE_SESSION, authenticated=True)  # its items are the requests
        try:
            socket = web.WebSocketResponse(protocols=("realtime",), max_msg_size=MAX_EVENT_BYTES)
            await socket.prepare(request)
            if self.sessions >= self.config.max_live_sessions:
                await socket.send_json(events.error_event(
                    "overloaded", f"the server holds its limit of {self.config.max_live_sessions} live "
                    "sessions (MAX_LIVE_SESSIONS); try again shortly", kind="server_error"))
                await socket.close(code=CLOSE_TRY_AGAIN_LATER, message=b"overloaded")
                return socket
            self.sessions += 1
            self.service.metrics.live_sessions.inc()
            try:
                await self._session(socket, request.headers.get("X-Machine-Id", "unknown"))
            finally:
                self.sessions -= 1
                self.service.metrics.live_sessions.dec()
            return socket
        finally:
            self.service.leave(address, record)

    async def _session(self, socket: web.WebSocketResponse, machine_id: str) -> None:
        if self._vad_model is None:
            self._vad_model = await asyncio.get_running_loop().run_in_executor(self._audio, StreamingVad.load)
        settings = events.SessionSettings()
        session_id = events.new_id("sess")

        async def send(event: dict[str, Any]) -> None:
            if not socket.closed:
                await socket.send_json(event)

        await send(events.event("session.created", session=events.session_object(session_id, settings)))
        live = LiveSession(self.service, settings, send, machine_id)
        audio_in = LiveInput(self._vad_model, settings.rate)
        ends = time.monotonic() + self.config.live_max_session_s
        try:
            while True:
                wait = min(self.config.live_idle_timeout_s, max(0.0, ends - time.monotonic()))
                try:
                    message = await socket.receive(timeout=wait)
                except TimeoutError:
                    why = (f"the session reached its limit of {self.config.live_max_session_s:g} s"
                           if time.monotonic() >= ends else
                           f"no event for {self.config.live_idle_timeout_s:g} s (LIVE_IDLE_TIMEOUT_S)")
                    await send(events.error_event("timeout", why))
                    await socket.close(code=1000, message=b"timeout")
                    return
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    return  # closed, closing or an error (a frame over MAX_EVENT_BYTES: 1009)
                try:
                    event = events.binary_append(message.data) if message.type == WSMsgType.BINARY \
                        else events.parse_event(message.data, live.settings)
                    if isinstance(event, events.Append):
                        await self._feed(live, audio_in, event.pcm)
                    elif isinstance(event, events.SessionUpdate):
                        if event.settings.rate != audio_in.rate:
                            audio_in = LiveInput(self._vad_model, event.settings.rate)
                        live.update(event.settings)
                        kind = "transcription_session.updated" if event.beta else "session.updated"
                        await send(events.event(kind, session=events.session_object(
                            session_id, event.settings, event.beta)))
                    elif isinstance(event, events.Commit):
                        await live.commit()
                    else:
                        await live.clear()
                except events.EventError as error:
                    await send(events.of_error(error))
                except Overloaded as error:  # the session holds too much audio not yet transcribed
                    await send(events.error_event(error.code, str(error), kind="server_error"))
                    await socket.close(code=CLOSE_TRY_AGAIN_LATER, message=b"overloaded")
                    return
        finally:
            await live.close()

    async def _feed(self, live: LiveSession, audio_in: LiveInput, pcm: bytes) -> None:
        loop = asyncio.get_running_loop()
        samples, probabilities = await loop.run_in_executor(self._audio, audio_in.feed, pcm)
        await live.audio(samples, probabilities)


def _refuse(error: AsrError) -> web.Response:
    """Refused before the upgrade: the HTTP API's error, as the openai client reads it."""
    status, body = error_body(error)
    return web.json_response(body, status=status, headers=error_headers(status))
