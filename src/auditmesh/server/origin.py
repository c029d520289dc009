"""Writes from a web page must come from the server's own pages (cross-site request forgery).

A browser sends `Origin` with every cross-origin POST, the "simple" ones too (a form, a
no-cors fetch of text/plain) that it sends without asking first (Fetch standard, CORS
preflight). So any page a user of the console opens could otherwise post forged events
through that user's browser to a server on localhost. The API's own clients (sidecars,
`auditmesh ingest`, curl, OTLP exporters) send no `Origin`; the console sends its own. A
write whose `Origin` names another site, or `null`, is refused with 403 (a JSON error, or
the `refusal` the app gives: a google.rpc.Status on the OTLP paths, server/app.py).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SameOriginWrites:
    """ASGI middleware: refuses a write that a page of another origin made a browser send."""

    def __init__(
        self, app: ASGIApp, *, refusal: Callable[[Scope, str], Response] | None = None
    ) -> None:
        self.app = app
        self.refusal = refusal or json_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and origin.lower() != own_origin(scope, headers):
                message = (
                    f"a write from the web page at {origin.decode('latin-1')!r} is refused: "
                    "only this server's own pages may post from a browser"
                )
                await self.refusal(scope, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def json_refusal(scope: Scope, message: str) -> Response:
    """403 with `{"error": message}`."""
    return JSONResponse({"error": message}, status_code=403)


def own_origin(scope: Scope, headers: dict[bytes, bytes]) -> bytes:
    """scheme://host[:port] as the browser names this server (RFC 6454 §6.1)."""
    host = headers.get(b"host", b"")
    return f"{scope.get('scheme', 'http')}://".encode() + host.lower()
