"""The ways in, I/O only: the WebSocket exchange (with its pre-auth gate), the OpenAI-compatible HTTP
API (with its upload), the browser page and the operator's sidecar. Each hands the request service
(``asr_server.service``) everything but its sockets and its wire format."""
