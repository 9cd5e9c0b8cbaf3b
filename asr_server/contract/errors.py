"""Every failure a client can see: one base class, each with its wire code and close code.

Layers raise these; only the transports (``transports/``) turn them into an error frame and a
WebSocket close. ``audio_too_large`` never becomes a frame: a binary frame
over ``MAX_AUDIO_BYTES`` is refused by the websockets library itself, which
closes with 1009 before the server sees a byte of it.
"""

from __future__ import annotations

from typing import ClassVar

# RFC 6455 close codes used here.
CLOSE_NORMAL = 1000
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


class AsrError(Exception):
    """A failure with a stable wire code; ``detail`` is safe to show the client."""

    code: ClassVar[str] = "internal_error"
    close_code: ClassVar[int] = CLOSE_INTERNAL_ERROR

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(AsrError):
    code = "unauthorized"
    close_code = CLOSE_POLICY_VIOLATION


class BadRequest(AsrError):
    code = "bad_request"
    close_code = CLOSE_POLICY_VIOLATION


class UnsupportedLanguage(AsrError):
    code = "unsupported_language"
    close_code = CLOSE_POLICY_VIOLATION


class InvalidAudio(AsrError):
    code = "invalid_audio"
    close_code = CLOSE_INVALID_PAYLOAD


class AudioTooLarge(AsrError):
    code = "audio_too_large"
    close_code = CLOSE_TOO_BIG


class AudioTooLong(AsrError):
    code = "audio_too_long"
    close_code = CLOSE_TOO_BIG


class RequestTimeout(AsrError):
    code = "timeout"
    close_code = CLOSE_POLICY_VIOLATION


class Overloaded(AsrError):
    code = "overloaded"
    close_code = CLOSE_TRY_AGAIN_LATER


class InternalError(AsrError):
    code = "internal_error"
    close_code = CLOSE_INTERNAL_ERROR


ALL_ERRORS: tuple[type[AsrError], ...] = (
    Unauthorized, BadRequest, UnsupportedLanguage, InvalidAudio, AudioTooLarge,
    AudioTooLong, RequestTimeout, Overloaded, InternalError,
)
