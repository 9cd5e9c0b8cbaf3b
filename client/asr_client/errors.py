"""Every way a request can fail, as one exception with a code, and the CLI's exit code for each.

The server's codes are the wire contract's (``{"error": "<code>"}``); a few more
name what goes wrong on the client's side before or around the exchange. The
exit codes are part of the CLI's interface: scripts branch on them, so a code
keeps its number once published.
"""

from __future__ import annotations

# The server's error codes, in the order of the README's error table.
SERVER_CODES: tuple[str, ...] = (
    "unauthorized", "bad_request", "unsupported_language", "invalid_audio", "audio_too_large",
    "audio_too_long", "timeout", "overloaded", "internal_error",
)

# Failures the client itself detects.
CLIENT_CODES: tuple[str, ...] = (
    "connection_failed",  # refused, unreachable, bad URL, handshake failed or timed out
    "unreadable_audio",  # the file is missing or soundfile cannot decode it
    "protocol_error",  # the server answered something that is not a result or an error frame
    "response_timeout",  # no answer within the client's timeout_s
    "output_error",  # the CLI could not write a result file
)

# An error frame with a code this client does not know (a newer server) still maps to a number.
UNKNOWN_SERVER_CODE = "unknown_error"

EXIT_CODES: dict[str, int] = {
    "connection_failed": 3,
    "unreadable_audio": 4,
    "protocol_error": 5,
    "response_timeout": 6,
    "output_error": 7,
    "unauthorized": 10,
    "bad_request": 11,
    "unsupported_language": 12,
    "invalid_audio": 13,
    "audio_too_large": 14,
    "audio_too_long": 15,
    "timeout": 16,
    "overloaded": 17,
    "internal_error": 18,
    UNKNOWN_SERVER_CODE: 19,
}

_WHY: dict[str, str] = {
    "connection_failed": "could not connect to the server",
    "unreadable_audio": "the file could not be read as audio",
    "protocol_error": "the server's answer was not understood",
    "response_timeout": "no answer within --timeout",
    "output_error": "a result file could not be written",
    "unauthorized": "missing or wrong API key",
    "bad_request": "the server rejected the request's fields",
    "unsupported_language": "the language is not one the server supports",
    "invalid_audio": "the server could not decode the audio",
    "audio_too_large": "the audio is larger than the server's MAX_AUDIO_BYTES",
    "audio_too_long": "the audio is longer than the server's MAX_AUDIO_SECONDS",
    "timeout": "the server timed out waiting for the request",
    "overloaded": "the server is busy or still loading: try again later",
    "internal_error": "the server failed on this request",
    UNKNOWN_SERVER_CODE: "an error code this client does not know",
}


class AsrClientError(Exception):
    """A failed request: ``code`` is one of ``SERVER_CODES``, ``CLIENT_CODES`` or ``unknown_error``."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.code, EXIT_CODES[UNKNOWN_SERVER_CODE])


def exit_code_table() -> str:
    """The exit codes as aligned text, for ``--help``."""
    rows = [("0", "success"), ("1", "unexpected client failure (a bug)"), ("2", "bad command line")]
    rows += [(str(number), f"{code}: {_WHY[code]}") for code, number in EXIT_CODES.items()]
    return "\n".join(f"  {number:>3}  {text}" for number, text in rows)
