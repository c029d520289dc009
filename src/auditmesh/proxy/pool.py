"""Upstream connection pool: reuse keep-alive connections to one upstream address.

A pooled connection is a pair of asyncio streams plus what its handshake established.
Idle connections the peer has closed are noticed (EOF already read or transport closing)
and discarded on acquire; the pool keeps at most `size` idle connections.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls_version: str | None = None
    reused: bool = False
    http: object = None  # the sans-IO connection state of the current exchange

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


Connect = Callable[[], Awaitable[Upstream]]


class Pool:
    def __init__(self, connect: Connect, *, size: int, connect_timeout_s: float) -> None:
        self._connect = connect
        self._size = size
        self._timeout = connect_timeout_s
        self._idle: deque[Upstream] = deque()

    async def acquire(self) -> Upstream:
        """An idle live connection, or a new one (raises TimeoutError / OSError)."""
        while self._idle:
            upstream = self._idle.pop()
            if upstream.usable():
                upstream.reused = True
                return upstream
            upstream.close()
        return await asyncio.wait_for(self._connect(), self._timeout)

    def release(self, upstream: Upstream) -> None:
        if upstream.usable() and len(self._idle) < self._size:
            self._idle.append(upstream)
        else:
            upstream.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
