"""Reading a request body with a size limit, for every route that takes one.

The declared Content-Length is refused up front when too large; a streamed body is cut off
as soon as it passes the limit, so no client can make the server buffer more than that.
"""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body (or what it inflates to) is larger than the route accepts."""


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
