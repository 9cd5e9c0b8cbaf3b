"""The browser page at ``GET /``: one HTML file from package data, and the headers it is served with.

The page (``static/index.html``) records from the microphone or reads a file,
encodes a WAV and speaks the WebSocket protocol itself, so the server only
hands it out: read once at startup, never from disk per request. Its one
inline ``<style>`` and one inline ``<script>`` are allowed by their SHA-256
in the Content-Security-Policy, computed here from the file, so the policy
cannot go stale when the page is edited and nothing else inline can run.
One file and one route keep a reverse proxy's configuration to ``location = /``.
Its Live mode talks to ``/v1/realtime`` on the HTTP port: behind a proxy the
same origin, served directly the HTTP port of the same host, which the policy
then names (from the request's Host, when it is a plain host name or address).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

PAGE_PATHS = ("/", "/index.html")
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)
# A Host header's name as the policy may quote it (a DNS name, IPv4, IPv6 in brackets); else no Live origin.
_HOST = re.compile(r"(?P<name>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")


@dataclass(frozen=True)
class Page:
    """The page's text and the security policy that lets exactly its own inline code run."""

    html: str
    content_security_policy: str

    def respond(self, connection: ServerConnection, live_port: int | None = None) -> Response:
        """The page; with ``live_port`` (the HTTP port, where ``/v1/realtime`` is), its Live mode may
        connect there: the page is told the two ports, and the policy allows that one origin."""
        html, policy = self.html, self.content_security_policy
        host = _HOST.fullmatch(connection.request.headers.get("Host", "") if connection.request else "")
        if live_port and host:
            page_port = connection.local_address[1] if connection.local_address else ""
            html = html.replace('<html lang="en">', f'<html lang="en" data-live-port="{live_port}" '
                                f'data-page-port="{page_port}">', 1)
            origin = f"{host['name']}:{live_port}"
            policy = policy.replace("connect-src 'self'", f"connect-src 'self' ws://{origin} wss://{origin}")
        response = connection.respond(200, html)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        # Installed upgrades change the page: a browser must ask again, not show last week's copy.
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = policy
        response.headers["Referrer-Policy"] = "no-referrer"
        # The page asks for the microphone, and nothing else may.
        response.headers["Permissions-Policy"] = "microphone=(self), camera=(), geolocation=()"
        return response


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def content_security_policy(html: str) -> str:
    """Allow the page's own inline script and style (by hash), its WebSocket, and nothing else.

    ``blob:`` scripts: the AudioWorklet module is a Blob URL the page makes
    itself. ``connect-src 'self'`` covers ``ws:``/``wss:`` to the same host
    (CSP level 3), so the page works as well behind a TLS proxy.
    """
    found: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        found[tag].append(_hash(body))
    if not found["script"] or not found["style"]:
        raise ValueError("the page must hold an inline <script> and an inline <style> without attributes")
    return "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(found['script'])} blob:",
        f"style-src {' '.join(found['style'])}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def load_page() -> Page:
    html = (resources.files("asr_server") / "static" / "index.html").read_text(encoding="utf-8")
    return Page(html, content_security_policy(html))
