"""The HTTP API's upload: a multipart form read a chunk at a time, within the limits and the budget.

The text fields are held to ``MAX_FIELD_BYTES`` each and ``MAX_PARTS`` in all;
the file to ``MAX_AUDIO_BYTES``, each chunk held in the request's share of
the audio budget before it is kept. A body that is not the multipart it
claims is ``bad_request``. A file over the limit is read on and dropped to
the end of the body, so that the client, which sends its whole body before
it reads, sees our 413 and not a broken connection.
"""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from asr_server.admission import Allowance
from asr_server.contract.errors import AudioTooLarge, Overloaded
from asr_server.contract.openai_formats import FieldError

MAX_FIELD_BYTES = 64 * 1024  # a text field: the WebSocket metadata's bound
MAX_PARTS = 64
CHUNK_BYTES = 256 * 1024
# Multipart boundaries and part headers around the file, beyond MAX_AUDIO_BYTES itself.
FORM_OVERHEAD_BYTES = 1024 * 1024


async def read_form(request: web.Request, allowance: Allowance,
                    max_bytes: int) -> tuple[list[tuple[str, str]], bytearray]:
    """The text fields and the file, read a chunk at a time within the limits and the budget."""
    if not request.content_type.startswith("multipart/"):
        raise FieldError("send the request as multipart/form-data with a 'file' field", None)
    try:
        return await _read_parts(request, allowance, max_bytes)
    except ValueError as exc:  # aiohttp's word for a body that is not the multipart it says
        raise FieldError(f"not a readable multipart/form-data body: {str(exc)[:120]}", None) from None


async def _read_parts(request: web.Request, allowance: Allowance,
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
