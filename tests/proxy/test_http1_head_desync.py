"""A response to HEAD, or a 204 or 304, whose app also sends content (RFC 9110 §9.3.2,
§15.3.5, §15.4.5: such a response has none; RFC 9112 §6.3 rule 1: it ends at its header
section) must not be read by the sidecar as the response to the next caller's request on
the same pooled app connection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.proxy.loopback import Listener
from tests.proxy.mesh_fixture import mesh_context
from tests.proxy.test_http1_desync import exchange, plaintext_inbound

pytestmark = pytest.mark.integration

POISON = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON"
BODILESS = {b"/204": b"204 No Content", b"/304": b"304 Not Modified"}


def serve(conn: socket.socket) -> None:
    """Answers GET with its path; answers HEAD, GET /204 and GET /304 like a broken
    framework, with content too, sent 0.3 s after the head; GET /204-clean with a plain 204."""
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
            if method == b"HEAD" or path in BODILESS:
                status = BODILESS.get(path, b"200 OK")
                conn.sendall(b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n" % (status, len(POISON)))
                time.sleep(0.3)
                conn.sendall(POISON)
            elif path == b"/204-clean":
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                body = b"ok " + path
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture(scope="module")
def app() -> Iterator[Listener]:
    app = Listener(serve)
    yield app
    app.close()


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory, app: Listener) -> Iterator[int]:
    for mesh in mesh_context(tmp_path_factory.mktemp("head")):
        yield plaintext_inbound(mesh, app.port)


def test_content_after_a_head_response_is_not_the_next_callers_response(port: int) -> None:
    head = exchange(port, b"HEAD /a HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head
    answer = exchange(port, b"GET /victim HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")
    assert answer.endswith(b"ok /victim"), answer


def get(port: int, path: bytes) -> bytes:
    return exchange(port, b"GET %s HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n" % path)


@pytest.mark.parametrize("status", [b"204", b"304"])
def test_content_after_a_204_or_304_is_not_the_next_callers_response(
    port: int, status: bytes
) -> None:
    """Regression: the sidecar pooled the app connection after a 204 or 304 with a
    Content-Length, and the next caller got the content that came after it (POISON)."""
    answer = get(port, b"/" + status)
    assert answer.startswith(b"HTTP/1.1 " + status) and answer.endswith(b"\r\n\r\n"), answer
    assert get(port, b"/victim").endswith(b"ok /victim")


def test_a_plain_204_keeps_the_app_connection_pooled(port: int, app: Listener) -> None:
    """No Content-Length or Transfer-Encoding and nothing after the head: reused."""
    assert get(port, b"/warm").endswith(b"ok /warm")
    connections = app.accepted
    assert get(port, b"/204-clean").startswith(b"HTTP/1.1 204 ")
    assert get(port, b"/after").endswith(b"ok /after")
    assert app.accepted == connections
