"""How long the mesh listener holds a TLS connection it closed itself, against a real server
process: at the request-head deadline, at the deadline of a body discarded after its early
answer, at uvicorn's keep-alive idle timeout and after an answer with `Connection: close`.
The server sends its close_notify, but it need not wait for the client's (RFC 8446 §6.1):
a client that never sends one must not hold the server's descriptor, nor its place under
`--max-connections`, for uvloop's 30 s wait. The answers written before the close still
arrive, and a client that closes properly is unaffected."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.server.meshserver import mesh_server
from tests.server.rawhttp import parse_answer
from tests.server.test_connection_limit import raw_closed_after
from tests.server.test_mesh import Mesh

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 1.0  # the server's --header-timeout in these tests
BODY_TIMEOUT_S = 1.0  # and --body-timeout
KEEP_ALIVE_S = 5.0  # uvicorn's default idle timeout after a response
CLOSED_WITHIN_S = 3.0  # from the server's close to its TCP close (its linger is 1 s)
WAIT_S = 10.0  # how long a test waits for an answer or a close (uvloop's wait is 30 s)
BUNDLE = b"GET /v1/identity/bundle HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One place per listener: a connection the server closed but still holds locks the
    mesh listener against everyone else."""
    data = tmp_path_factory.mktemp("tls-close") / "data"
    extra = [
        "--header-timeout",
        f"{HEADER_TIMEOUT_S:g}",
        "--body-timeout",
        f"{BODY_TIMEOUT_S:g}",
        "--max-connections",
        "1",
    ]
    with mesh_server(data, extra) as running:
        yield running
    assert "Traceback" not in running.server.log_path.read_text()


@contextmanager
def _connect(mesh: Mesh) -> Iterator[ssl.SSLSocket]:
    """A TLS client that never sends a close_notify (Python's close does not)."""
    context = ssl.create_default_context(cadata=mesh.bundle().decode())
    context.check_hostname = False
    address = ("127.0.0.1", int(mesh.mesh_url.rsplit(":", 1)[1]))
    with context.wrap_socket(socket.create_connection(address)) as sock:
        sock.settimeout(WAIT_S)
        yield sock


def _read_answer(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    received = b""
    while (answer := parse_answer(received)) is None:
        data = sock.recv(65536)
        assert data, f"closed without a whole answer: {received!r}"
        received += data
    return answer


def _tls_closed(sock: ssl.SSLSocket) -> None:
    """Reads the server's close_notify (the TLS end of the stream), not answering it."""
    assert sock.recv(65536) == b""


def _assert_place_free(mesh: Mesh) -> None:
    """The only place on the listener is free: a new client is served, not refused."""
    with _connect(mesh) as sock:
        sock.sendall(BUNDLE)
        assert _read_answer(sock)[0] == 200


def test_a_head_cut_at_its_deadline_frees_the_descriptor_and_the_place(mesh: Mesh) -> None:
    with _connect(mesh) as sock:
        sock.sendall(b"GET /v1/identity/bundle HTTP/1.1\r\nHost: x\r\n")  # half a head
        start = time.monotonic()
        assert _read_answer(sock)[0] == 408
        assert HEADER_TIMEOUT_S * 0.9 <= time.monotonic() - start < HEADER_TIMEOUT_S + 2.0
        _tls_closed(sock)
        assert raw_closed_after(sock) < CLOSED_WITHIN_S
        _assert_place_free(mesh)


def test_a_discarded_body_cut_at_its_deadline_frees_the_descriptor(mesh: Mesh) -> None:
    with _connect(mesh) as sock:  # no client certificate: 401 before the body is read
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        assert _read_answer(sock)[0] == 401
        _tls_closed(sock)  # at the body deadline
        assert raw_closed_after(sock) < CLOSED_WITHIN_S
        _assert_place_free(mesh)


def test_an_idle_kept_alive_connection_closed_frees_the_descriptor(mesh: Mesh) -> None:
    with _connect(mesh) as sock:
        sock.sendall(BUNDLE)
        assert _read_answer(sock)[0] == 200
        start = time.monotonic()
        _tls_closed(sock)  # uvicorn's keep-alive timeout
        assert KEEP_ALIVE_S * 0.9 <= time.monotonic() - start < KEEP_ALIVE_S + 2.0
        assert raw_closed_after(sock) < CLOSED_WITHIN_S
        _assert_place_free(mesh)


def test_an_answer_with_connection_close_arrives_and_frees_the_descriptor(mesh: Mesh) -> None:
    """The answer is written before the close; a client reading it a little later (within
    the linger) still gets all of it."""
    with _connect(mesh) as sock:
        sock.sendall(b"GET /v1/identity/bundle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)
        status, headers, body = _read_answer(sock)
        assert status == 200 and headers["connection"] == "close"
        assert body == mesh.bundle()
        _tls_closed(sock)
        assert raw_closed_after(sock) < CLOSED_WITHIN_S
        _assert_place_free(mesh)


def test_a_client_that_answers_the_close_notify_is_closed_at_once(mesh: Mesh) -> None:
    """A proper client: its close_notify ends the server's wait, long before the linger."""
    with _connect(mesh) as sock:
        sock.sendall(b"GET /v1/identity/bundle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_answer(sock)[0] == 200
        _tls_closed(sock)
        raw = sock.unwrap()  # sends the client's close_notify
        start = time.monotonic()
        raw.settimeout(WAIT_S)
        assert raw.recv(65536) == b""
        assert time.monotonic() - start < 0.5
        raw.close()
        _assert_place_free(mesh)
