"""Upstream connection pool: reuse keep-alive connections to one upstream address.

A pooled connection is a pair of asyncio streams plus what its handshake established (the
server's verified certificate, for mTLS). An idle connection the peer has closed is
discarded on acquire: EOF already read, transport closing, or — what the event loop may not
have seen yet — its socket readable while idle (a FIN, a reset, a TLS close_notify, or bytes
nobody asked for); so is one whose SVID, the server's or the sidecar's own, expired meanwhile
(`Upstream.until_ns`). The pool keeps at most `size` idle connections. A peer can still close
in the instant after acquire; the proxy retries what is safe to retry (see `http_proxy`).
A connection relayed as bytes (TCP mode, a tunnel) is cut when an SVID expires: `relay_expiry`.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from auditmesh.proxy.accept import PeerTLS
from auditmesh.proxy.http1 import Connection
from auditmesh.proxy.tcp import LOCAL_CERTIFICATE_EXPIRED, PEER_CERTIFICATE_EXPIRED, Expiry

NO_EXPIRY_NS = 2**63 - 1  # plaintext: no certificate to expire


@dataclass(slots=True)
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls: PeerTLS | None = None  # the server's verified certificate; None for plaintext
    reused: bool = False
    http: Connection | None = None  # the sans-IO connection state of the current exchange
    content_may_follow: bool = False  # after the last response's head (http_proxy): not reused
    until_ns: int = NO_EXPIRY_NS  # not reused after (Unix ns): when an SVID of it expires

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def readable(self) -> bool:
        """Something arrived (or the peer hung up): on an idle connection that means the peer
        closed it, or sent something no request asked for. Bytes the event loop has already
        moved into the stream's buffer count too (asyncio keeps no public length of it), so a
        stale response can never be read as the answer to the next caller's request."""
        if getattr(self.reader, "_buffer", b""):
            return True
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)  # POLLHUP and POLLERR come anyway
        return bool(poller.poll(0))

    def close(self) -> None:
        self.writer.close()


Connect = Callable[[], Awaitable[Upstream]]


def relay_expiry(caller: PeerTLS | None, upstream: Upstream) -> Expiry | None:
    """When a byte relay between `caller` and `upstream` is cut (RFC 5280 §6.1.3 (a)(2)): as
    the first SVID it was authenticated with expires, or the CA that signed it; the caller's
    (inbound), the upstream server's or this sidecar's own (outbound). None in plaintext."""
    if caller is not None and caller.valid_until_ns <= upstream.until_ns:
        return Expiry(
            caller.valid_until_ns, PEER_CERTIFICATE_EXPIRED, _expired("the caller's", caller)
        )
    server = upstream.tls
    if server is not None and server.valid_until_ns <= upstream.until_ns:
        return Expiry(
            server.valid_until_ns, PEER_CERTIFICATE_EXPIRED, _expired("the upstream's", server)
        )
    if upstream.until_ns == NO_EXPIRY_NS:
        return None
    at = _iso(upstream.until_ns)
    return Expiry(
        upstream.until_ns,
        LOCAL_CERTIFICATE_EXPIRED,
        f"this sidecar's own SVID on the connection expired at {at}",
    )


def _expired(whose: str, tls: PeerTLS) -> str:
    if tls.valid_until_ns // 1_000_000_000 == tls.not_after:
        return f"{whose} SVID expired at {_iso(tls.valid_until_ns)}"
    return f"the CA that signed {whose} SVID expired at {_iso(tls.valid_until_ns)}"


def _iso(unix_ns: int) -> str:
    return datetime.fromtimestamp(unix_ns // 1_000_000_000, UTC).isoformat()


class Pool:
    def __init__(
        self,
        connect: Connect,
        *,
        size: int,
        connect_timeout_s: float,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._connect = connect
        self._size = size
        self._timeout = connect_timeout_s
        self._now_ns = now_ns
        self._idle: deque[Upstream] = deque()

    async def acquire(self, *, fresh: bool = False) -> Upstream:
        """An idle live connection, or a new one (raises TimeoutError / OSError); with
        `fresh`, always a new one. An idle connection past its `until_ns` is dropped: RFC 5280
        §6.1.3 (a)(2) wants its SVIDs valid now, and a new handshake's checks decide."""
        now_ns = self._now_ns()
        while self._idle and not fresh:
            upstream = self._idle.pop()
            if upstream.usable() and now_ns <= upstream.until_ns and not upstream.readable():
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
