"""A response to HEAD whose app also sends content (RFC 9110 §9.3.2: a HEAD response has
none; RFC 9112 §6.3 rule 1: it ends at its header section) must not be read by the sidecar
as the response to the next caller's request on the same pooled app connection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.proxy.loopback import Listener
from tests.proxy.mesh_fixture import mesh_context
from tests.proxy.test_http1_desync import plaintext_inbound

pytestmark = pytest.mark.integration

POISON = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON"


def serve(conn: socket.socket) -> None:
    """Answers GET with its path; answers HEAD like a broken framework, with content too,
    sent 0.3 s after the head."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(10)
    buffer = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            method, path = head.split(b" ", 2)[:2]
            if method == b"HEAD":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(POISON))
                time.sleep(0.3)
                conn.sendall(POISON)
            else:
                body = b"ok " + path
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    app = Listener(serve)
    for mesh in mesh_context(tmp_path_factory.mktemp("head")):
        yield plaintext_inbound(mesh, app.port)
    app.close()


def call(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(raw)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_content_after_a_head_response_is_not_the_next_callers_response(port: int) -> None:
    head = call(port, b"HEAD /a HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head
    answer = call(port, b"GET /victim HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")
    assert answer.endswith(b"ok /victim"), answer
