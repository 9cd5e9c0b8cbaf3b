"""The OpenAI-compatible HTTP API (aiohttp): ``/v1/audio/transcriptions``, ``translations``, ``models``.

The same way through as a WebSocket request, from the key to the one log
line: the bearer key is checked (constant time) before a byte of the body is
read; the multipart upload is read a chunk at a time under the same audio
limits and budget; audio beyond WAV is decoded off the loop (``decode_audio``);
the same scheduler, post-processing, metrics and request log follow. Errors
come in OpenAI's shape, with our error code as ``code``. Building the fields
and the bodies is pure (``parse_form``, ``render``, ``http_formats.py``) and
tested without sockets.

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

from aiohttp import BodyPartReader, web

from asr_server import http_formats, protocol
from asr_server.audio import decode_audio
from asr_server.errors import AsrError, AudioTooLarge, InternalError, Overloaded, RequestTimeout, Unauthorized
from asr_server.http_formats import FieldError, parse_form
from asr_server.limits import Allowance, client_address
from asr_server.server import CLIENT_GONE, AsrServer, RequestRecord

log = logging.getLogger(__name__)

MAX_FIELD_BYTES = 64 * 1024  # a text field: the WebSocket metadata's bound
MAX_PARTS = 64
CHUNK_BYTES = 256 * 1024
# Multipart boundaries and part headers around the file, beyond MAX_AUDIO_BYTES itself.
FORM_OVERHEAD_BYTES = 1024 * 1024

_STATUS = {"unauthorized": 401, "bad_request": 400, "unsupported_language": 400, "invalid_audio": 400,
           "audio_too_large": 413, "audio_too_long": 413, "timeout": 400, "overloaded": 429,
           "internal_error": 503}
_TYPE = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error",
         429: "rate_limit_error", 503: "server_error"}
_PARAM = {"unsupported_language": "language", "invalid_audio": "file", "audio_too_large": "file",
          "audio_too_long": "file"}


def error_body(error: AsrError) -> tuple[int, dict[str, Any]]:
    status = _STATUS.get(error.code, 503)
    param = error.param if isinstance(error, FieldError) else _PARAM.get(error.code)
    return status, {"error": {"message": error.detail, "type": _TYPE[status], "param": param,
                              "code": error.code}}


def _error_response(error: AsrError) -> web.Response:
    status, body = error_body(error)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="asr-server"'}
    return web.json_response(body, status=status, headers=headers)


class HttpApi:
    """The aiohttp application over one ``AsrServer`` (its scheduler, limits, metrics and keys)."""

    def __init__(self, server: AsrServer, model_name: str) -> None:
        self.server = server
        self.config = server.config
        self.model_name = model_name
        self.app = web.Application(client_max_size=MAX_FIELD_BYTES)  # request.post() unused: see _read_form
        self.app.add_routes([
            web.post("/v1/audio/transcriptions", self.transcriptions),
            web.post("/v1/audio/translations", self.translations),
            web.get("/v1/models", self.models),
            web.get("/v1/models/{model}", self.model),
            web.get("/health", self.health),
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
        status, body = self.server.health()
        return web.json_response(body, status=status)

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.server.keys.allows_key(token.strip() if scheme.lower() == "bearer" else None)

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
        """One request, counted and logged once whatever its outcome (as ``server.handle`` does)."""
        record = RequestRecord(task=task)
        server = self.server
        address = client_address(request.remote or "-", request.headers.getall("X-Forwarded-For", []),
                                 self.config.trusted_proxies)
        if refusal := server.connections.admit(address):
            record.status = Overloaded.code
            server.record(record)
            return _error_response(Overloaded(refusal))
        server.metrics.inflight.inc()
        allowance = server.audio_budget.allowance()
        try:
            return await self._exchange(request, record, task, allowance)
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
            allowance.release()
            server.connections.release(address)
            server.metrics.inflight.dec()
            server.record(record)

    async def _exchange(self, request: web.Request, record: RequestRecord, task: str,
                        allowance: Allowance) -> web.StreamResponse:
        if not self._authorised(request):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer ...)")
        record.authenticated = True
        record.machine_id = request.headers.get("X-Machine-Id", "unknown")
        max_bytes = self.config.effective_max_audio_bytes
        if (request.content_length or 0) > max_bytes + FORM_OVERHEAD_BYTES:  # refused unread
            raise AudioTooLarge(f"the upload is {request.content_length} bytes; "
                                f"this server accepts files of at most {max_bytes} bytes")
        if self.server.audio_budget.exhausted:
            raise Overloaded("the server holds its limit of audio in flight; try again shortly")
        try:
            async with asyncio.timeout(self.config.audio_timeout_s):
                fields, data = await self._read_form(request, allowance, max_bytes)
        except TimeoutError:
            raise RequestTimeout(f"the upload did not complete within {self.config.audio_timeout_s:g} s") \
                from None
        record.audio_arrived = time.monotonic()
        form = parse_form(fields, task)
        record.language = form.language or "detect"
        audio = await asyncio.to_thread(decode_audio, data, self.config.max_audio_seconds)
        del data
        if not allowance.hold(audio.samples.nbytes):
            raise Overloaded("the server holds its limit of audio in flight; try again shortly")
        record.audio_s = audio.duration_s
        options = protocol.TranscribeOptions(
            language=form.language, task=task, prompt=form.prompt, temperature=form.temperature,
            word_timestamps="word" in form.granularities and form.response_format == "verbose_json")
        if form.stream:
            return await self._stream(request, record, audio.samples, options)
        transcription = await self.server.scheduler.submit(audio.samples, options)
        record.language = transcription.language or record.language
        corrected = protocol.PostprocessOutcome()
        if form.response_format not in ("srt", "vtt"):  # subtitles keep whisper's timed text
            corrected = await self.server.postprocess(transcription, form.postprocess, task, record)
        content_type, body = http_formats.render(form, transcription, corrected, audio.duration_s)
        return web.Response(text=body, content_type=content_type, charset="utf-8")

    async def _read_form(self, request: web.Request, allowance: Allowance,
                         max_bytes: int) -> tuple[list[tuple[str, str]], bytearray]:
        """The text fields and the file, read a chunk at a time within the limits and the budget."""
        if not request.content_type.startswith("multipart/"):
            raise FieldError("send the request as multipart/form-data with a 'file' field", None)
        try:
            return await self._read_parts(request, allowance, max_bytes)
        except ValueError as exc:  # aiohttp's word for a body that is not the multipart it says
            raise FieldError(f"not a readable multipart/form-data body: {str(exc)[:120]}", None) from None

    async def _read_parts(self, request: web.Request, allowance: Allowance,
                          max_bytes: int) -> tuple[list[tuple[str, str]], bytearray]:
        reader = await request.multipart()
        fields: list[tuple[str, str]] = []
        data: bytearray | None = None
        for _ in range(MAX_PARTS):
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise FieldError("nested multipart bodies are not accepted", None)
            if part.name == "file":
                if data is not None:
                    raise FieldError("send one file per request", "file")
                data = bytearray()
                while chunk := await part.read_chunk(CHUNK_BYTES):
                    if len(data) + len(chunk) > max_bytes:
                        await _discard_rest(request)
                        raise AudioTooLarge(f"the file is larger than {max_bytes} bytes (MAX_AUDIO_BYTES)")
                    if not allowance.hold(len(data) + len(chunk)):
                        raise Overloaded("the server holds its limit of audio in flight; try again shortly")
                    data += chunk
            else:
                value = bytearray()
                while chunk := await part.read_chunk(8192):
                    value += chunk
                    if len(value) > MAX_FIELD_BYTES:
                        raise FieldError(f"field {str(part.name)[:40]!r} is larger than "
                                         f"{MAX_FIELD_BYTES} bytes", part.name)
                fields.append((part.name or "", value.decode("utf-8", "replace")))
        else:
            raise FieldError(f"more than {MAX_PARTS} form fields", None)
        if not data:
            raise FieldError("the form has no 'file' field, or it is empty", "file")
        return fields, data

    async def _stream(self, request: web.Request, record: RequestRecord, samples: Any,
                      options: protocol.TranscribeOptions) -> web.StreamResponse:
        """Server-sent events: the response begins with the first delta, or with the answer."""
        finals: asyncio.Queue[list[protocol.Segment]] = asyncio.Queue()
        work = asyncio.ensure_future(self.server.scheduler.submit(samples, options, finals.put_nowait))
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


async def _discard_rest(request: web.Request) -> None:
    """Read what the client still sends, keeping none of it, so that it reads our 413 before we close.

    HTTP clients send the whole body before they read the answer: one cut off mid-upload
    sees a broken connection, not the error. The body's declared length was bounded
    before it was read (``FORM_OVERHEAD_BYTES`` past the limit); an undeclared one is
    read for at most that much.
    """
    left = FORM_OVERHEAD_BYTES if request.content_length is None else request.content_length
    while left > 0 and (chunk := await request.content.read(min(CHUNK_BYTES, left))):
        left -= len(chunk)


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")
