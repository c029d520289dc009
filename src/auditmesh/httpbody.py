"""Reading a request body with a size limit and a deadline, for every route that takes one.

The declared Content-Length is refused up front when too large; a streamed body is cut off
as soon as it passes the limit, so no client can make the server buffer more than that.
`BodyDeadline` (ASGI middleware on both listeners: `server/app.py`, `server/run.py`) gives the
whole body a time limit, so no client can hold a connection and its buffer by declaring a
large body and trickling it a byte at a time (a slowloris on the body).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_TIMEOUT_S = 30.0  # `auditmesh server --body-timeout`: a 16 MiB batch at ~4.5 Mbit/s


class BodyTooLarge(Exception):
    """The body (or what it inflates to) is larger than the route accepts."""


class BodyTimeout(Exception):
    """The body did not arrive whole within the deadline (408, RFC 9110 §15.5.9). Raised by
    the receive of `BodyDeadline`; a route may answer it in its own format (OTLP/HTTP), or
    let the middleware answer it."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"the request body did not arrive whole within {timeout_s:g} s of the request "
            "head (the server's --body-timeout), so the request was not processed: send it "
            "again on a new connection, in smaller parts or over a faster link"
        )
        self.timeout_s = timeout_s


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case; "" when there is none."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class BodyDeadline:
    """ASGI middleware: a request's body must arrive whole within `timeout_s` of its head.

    Past the deadline the app's next receive raises `BodyTimeout`, which ends the route
    before it has acted on a body it never had whole; unless the route answered it itself,
    this answers 408 with a JSON error. Either answer closes the connection: the rest of
    the body may still be on its way, so the next request's framing is lost (RFC 9110
    §15.5.9 asks for "close"). Once the body is whole, receive is passed through untimed
    (it then only waits for a disconnect)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        whole = expired = started = False

        async def timed_receive() -> Message:
            nonlocal whole, expired
            if whole:
                return await receive()
            if not expired:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    expired = True
                else:
                    whole = message["type"] != "http.request" or not message.get("more_body")
                    return message
            raise BodyTimeout(self.timeout_s)

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if expired:
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        except BodyTimeout as exc:
            if started:  # no route answers before it has the body: a bug, not a timeout
                raise
            refusal = JSONResponse({"error": str(exc), "timeout_s": exc.timeout_s}, 408)
            await refusal(scope, timed_receive, closing_send)
