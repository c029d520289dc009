"""`proxy.pool` on real loopback sockets: an idle connection the peer has closed (or written
to unasked) is not handed out again, even before the event loop has read the FIN."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from auditmesh.proxy.pool import Pool, Upstream
from tests.proxy.loopback import Listener

pytestmark = pytest.mark.integration


class Peer:
    """Keeps every connection it accepts, for the test to close or write to from outside
    the event loop."""

    def __init__(self) -> None:
        self.accepted: list[socket.socket] = []
        self._listener = Listener(self.accepted.append)
        self.port = self._listener.port

    def close(self) -> None:
        self._listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    yield server
    server.close()


def pool_to(peer: Peer) -> Pool:
    async def connect() -> Upstream:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        return Upstream(reader, writer)

    return Pool(connect, size=4, connect_timeout_s=5)


async def _reuse_after(peer: Peer, act: str) -> tuple[bool, Upstream, Upstream]:
    pool = pool_to(peer)
    first = await pool.acquire()
    pool.release(first)
    while len(peer.accepted) < 1:
        await asyncio.sleep(0.01)
    if act == "close":
        peer.accepted[0].close()
    elif act in ("write", "write, then the loop reads it"):
        peer.accepted[0].sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    if act == "write, then the loop reads it":
        await asyncio.sleep(0.2)  # the bytes move into the StreamReader's buffer
    else:  # block (no await): the bytes or the FIN reach our socket, the loop has not run
        time.sleep(0.1)
    second = await pool.acquire()
    closing = first.writer.is_closing()  # acquire closed it, or it is the one handed out
    pool.close()
    for upstream in (first, second):
        upstream.close()
        await upstream.writer.wait_closed()
    return closing, first, second


@pytest.mark.parametrize("act", ["close", "write", "write, then the loop reads it"])
def test_an_idle_connection_the_peer_closed_or_wrote_to_is_not_reused(peer: Peer, act: str) -> None:
    closed, first, second = asyncio.run(_reuse_after(peer, act))
    assert second is not first and not second.reused
    assert closed


def test_a_live_idle_connection_is_reused(peer: Peer) -> None:
    closed, first, second = asyncio.run(_reuse_after(peer, "nothing"))
    assert second is first and second.reused and not closed
    assert second.tls is None  # plaintext: no certificate to describe
