"""The OpenAI-compatible HTTP API (aiohttp): ``/v1/audio/transcriptions``, ``translations``, ``models``.

The same way through as a WebSocket request, from the key to the one log
line: the bearer key is checked (constant time) before a byte of the body is
read; the multipart upload is read a chunk at a time under the same audio
limits and budget (``openai_upload.py``); audio beyond WAV is decoded off the
loop (``decode_audio``);
the same scheduler, post-processing, metrics and request log follow. Errors
come in OpenAI's shape, with our error code as ``code``. Judging the fields and
building the bodies, errors too, is pure (``contract/openai_formats.py``) and tested
without sockets.

With ``stream=true`` the answer is server-sent events: a
``transcript.text.delta`` as each window's segments become final, then
``transcript.text.done``. The response starts with the first delta, so an
error before it (a full queue) still has its HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from asr_server.admission import Allowance, client_address
from asr_server.contract import openai_formats
from asr_server.contract.domain import PostprocessOutcome, Segment, TranscribeOptions
from asr_server.contract.errors import (
    AsrError,
    AudioTooLarge,
    InternalError,
    Overloaded,
    RequestTimeout,
    Unauthorized,
)
from asr_server.contract.openai_formats import error_body, error_headers, parse_form
from asr_server.service import CLIENT_GONE, AsrService, RequestRecord
from asr_server.transports.openai_upload import FORM_OVERHEAD_BYTES, MAX_FIELD_BYTES, read_form
from asr_server.transports.realtime import RealtimeEndpoint

log = logging.getLogger(__name__)


def _error_response(error: AsrError) -> web.Response:
    status, body = error_body(error)
    return web.json_response(body, status=status, headers=error_headers(status))


class HttpApi:
    """The aiohttp application over one service (its scheduler, limits, metrics and keys)."""

    def __init__(self, service: AsrService, model_name: str) -> None:
        self.service = service
        self.config = service.config
        self.model_name = model_name
        self.app = web.Application(client_max_size=MAX_FIELD_BYTES)  # request.post() unused: see _read_form
        self.app.add_routes([
            web.post("/v1/audio/transcriptions", self.transcriptions),
            web.post("/v1/audio/translations", self.translations),
            web.get("/v1/models", self.models),
            web.get("/v1/models/{model}", self.model),
            web.get("/health", self.health),
            RealtimeEndpoint(service).route(),
        ])
        self.runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port bound (when asked for port 0)."""
        # handler_cancellation: a client that hangs up cancels its handler, so its queue place is
        # freed. keepalive_timeout also closes a connection that never sends a whole request
        # (aiohttp arms it when the connection opens): the WebSocket metadata's timeout.
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                                    shutdown_timeout=self.config.shutdown_grace_s,
                                    keepalive_timeout=max(1.0, self.config.metadata_timeout_s))
        await self.runner.setup()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._connection, host, port)
        return int(self._listener.sockets[0].getsockname()[1])

    def _connection(self) -> asyncio.BaseProtocol:
        """aiohttp's handler for a new connection, or a refusal once MAX_PENDING_CONNECTIONS are open.

        Each open connection may hold up to its headers (aiohttp's bounds) before its key is
        checked, so their number is capped as the WebSocket port's unauthenticated ones are.
        aiohttp counts a connection once it is made, a loop turn after this call, so a burst
        accepted in one turn may pass the cap by that burst (asyncio's accept backlog, 100).
        """
        assert self.runner is not None and self.runner.server is not None
        if len(self.runner.server.connections) >= self.config.effective_max_pending_connections:
            return _Refusal()
        return self.runner.server()

    async def stop(self) -> None:
        """Stop listening; requests in flight get the shutdown grace (aiohttp's cleanup)."""
        if self._listener is not None:
            self._listener.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        status, body = self.service.health()
        return web.json_response(body, status=status)

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.service.allows(token.strip() if scheme.lower() == "bearer" else None)

    def _model_entry(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "asr-server"}

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error_response(Unauthorized("missing or wrong API key (Authorization: Bearer ...)"))
        return web.json_response({"object": "list", "data": [self._model_entry()]})

    async def model(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error_response(Unauthorized("missing or wrong API key (Authorization: Bearer ...)"))
        return web.json_response(self._model_entry())  # any name is served by the loaded model

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "translate")

    async def _handle(self, request: web.Request, task: str) -> web.StreamResponse:
        """One request, counted and logged once by the service whatever its outcome."""
        record = RequestRecord(task=task)
        service = self.service
        address = client_address(request.remote or "-", request.headers.getall("X-Forwarded-For", []),
                                 self.config.trusted_proxies)
        if refusal := service.admit(address):
            record.status = Overloaded.code
            service.record(record)
            return _error_response(Overloaded(refusal))
        try:
            return await self._exchange(request, record, task)
        except AsrError as err:
            record.status = err.code
            return _error_response(err)
        except asyncio.CancelledError:
            record.status = CLIENT_GONE
            raise
        except (ConnectionResetError, web.HTTPException):
            record.status = CLIENT_GONE
            raise
        except Exception:
            log.exception("request %s failed", record.request_id)
            record.status = "internal_error"
            return _error_response(InternalError("unexpected server error"))
        finally:
            service.leave(address, record)

    async def _exchange(self, request: web.Request, record: RequestRecord, task: str) -> web.StreamResponse:
        if not self._authorised(request):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer ...)")
        record.authenticated = True
        record.machine_id = request.headers.get("X-Machine-Id", "unknown")
        max_bytes = self.config.effective_max_audio_bytes
        if (request.content_length or 0) > max_bytes + FORM_OVERHEAD_BYTES:  # refused unread
            raise AudioTooLarge(f"the upload is {request.content_length} bytes; "
                                f"this server accepts files of at most {max_bytes} bytes")
        allowance = self.service.allowance()
        try:
            return await self._transcribe(request, record, task, allowance, max_bytes)
        finally:
            allowance.release()

    async def _transcribe(self, request: web.Request, record: RequestRecord, task: str,
                          allowance: Allowance, max_bytes: int) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.config.audio_timeout_s):
                fields, data = await read_form(request, allowance, max_bytes)
        except TimeoutError:
            raise RequestTimeout(f"the upload did not complete within {self.config.audio_timeout_s:g} s") \
                from None
        record.audio_arrived = time.monotonic()
        form = parse_form(fields, task)
        record.language = form.language or "detect"
        audio = await self.service.decode(data, record, allowance, any_format=True)
        del data
        options = TranscribeOptions(
            language=form.language, task=task, prompt=form.prompt, temperature=form.temperature,
            word_timestamps="word" in form.granularities and form.response_format == "verbose_json")
        if form.stream:
            return await self._stream(request, record, audio.samples, options)
        transcription = await self.service.transcribe(audio.samples, options)
        record.language = transcription.language or record.language
        corrected = PostprocessOutcome()
        if form.response_format not in ("srt", "vtt"):  # subtitles keep whisper's timed text
            corrected = await self.service.postprocess(transcription, form.postprocess, task, record)
        content_type, body = openai_formats.render(form, transcription, corrected, audio.duration_s)
        return web.Response(text=body, content_type=content_type, charset="utf-8")

    async def _stream(self, request: web.Request, record: RequestRecord, samples: Any,
                      options: TranscribeOptions) -> web.StreamResponse:
        """Server-sent events: the response begins with the first delta, or with the answer."""
        finals: asyncio.Queue[list[Segment]] = asyncio.Queue()
        work = asyncio.ensure_future(self.service.transcribe(samples, options, finals.put_nowait))
        response: web.StreamResponse | None = None
        sent_text = False
        try:
            while True:
                waiting = asyncio.ensure_future(finals.get())
                await asyncio.wait({work, waiting}, return_when=asyncio.FIRST_COMPLETED)
                if not waiting.done():
                    waiting.cancel()
                    if finals.empty():
                        break
                    continue
                for segment in waiting.result():
                    response = response or await self._start_events(request)
                    delta = (" " if sent_text else "") + segment.text
                    sent_text = True
                    await _event(response, {"type": "transcript.text.delta", "delta": delta})
            try:
                transcription = work.result()
            except AsrError as err:
                if response is None:
                    raise
                record.status = err.code
                await _event(response, {"type": "error", "error": error_body(err)[1]["error"]})
                await response.write_eof()
                return response
            record.language = transcription.language or record.language
            response = response or await self._start_events(request)
            await _event(response, {"type": "transcript.text.done", "text": transcription.text,
                                    "language": transcription.language})
            await response.write_eof()
            return response
        finally:
            if not work.done():
                work.cancel()

    async def _start_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return response


class _Refusal(asyncio.Protocol):
    """A connection over the cap: told so (OpenAI's error shape, 503) and closed unread."""

    BODY = json.dumps({"error": {"message": "the server holds its limit of open connections; try again "
                                            "shortly", "type": "server_error", "param": None,
                                 "code": "overloaded"}}).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                        + str(len(self.BODY)).encode() + b"\r\n\r\n" + self.BODY)
        transport.close()


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")
