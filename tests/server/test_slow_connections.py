"""The connection deadlines (`--header-timeout`, and `--body-timeout` on a body answered
before it was read and on answers the client does not read; server/protocol.py) against
real server processes over raw sockets: a request head trickled past its deadline gets 408
and its connection closed; so is a new connection that sends nothing, or only blank lines;
a body still trickling in after its early answer (413) has its connection closed; a client
that stops reading its answers is cut off; slow heads whole within the deadline, a body
that follows its early answer promptly, and a slow but steady reader keep their
connection."""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from auditmesh.events import encode_ndjson
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate
from tests.server.meshserver import mesh_server
from tests.server.rawhttp import parse_answer

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 1.5  # the servers' --header-timeout in these tests
BODY_TIMEOUT_S = 2.0  # and --body-timeout
DEADLINES = ["--header-timeout", f"{HEADER_TIMEOUT_S:g}", "--body-timeout", f"{BODY_TIMEOUT_S:g}"]
TRICKLE_GAP_S = 0.3  # between bytes that would go on for ever
SLOW_GAP_S = 0.1  # between the pieces of a head that is whole in a fifth of the deadline
LIMIT_S = 30.0  # how long a test waits for the server to close a connection

TOO_LARGE = 17 * 1024 * 1024  # a Content-Length POST /v1/events answers 413 unread
METRICS = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("slow-connections") / "data"
    with ServerProcess(data, extra=[*DEADLINES, "--otlp-grpc", "off"]) as running:
        yield running


@dataclass(frozen=True)
class Exchange:
    received: bytes
    closed_after_s: float | None  # from the first send; None: still open after LIMIT_S

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        answer = parse_answer(self.received)
        assert answer is not None, f"no whole answer: {self.received!r}"
        return answer


def _trickle(
    sock: socket.socket, head: bytes, pieces: Iterable[bytes], *, past_answer: bool = False
) -> Exchange:
    """Sends `head`, then `pieces` TRICKLE_GAP_S apart, until the server answers (or, with
    `past_answer`, until it closes the connection); reads everything until it closes."""
    start = time.monotonic()
    sock.sendall(head)
    sock.settimeout(TRICKLE_GAP_S)
    left = iter(pieces)
    received = b""
    while time.monotonic() - start < LIMIT_S:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            piece = next(left, None) if past_answer or not received else None
            if piece is not None:
                try:
                    sock.sendall(piece)
                except OSError:  # closed meanwhile (reset, or TLS's broken pipe)
                    return Exchange(received, time.monotonic() - start)
            continue
        except (ConnectionResetError, ssl.SSLError):
            return Exchange(received, time.monotonic() - start)
        if not data:
            return Exchange(received, time.monotonic() - start)
        received += data
    return Exchange(received, None)


def _exchange(sock: socket.socket, pieces: Iterable[bytes]) -> tuple[int, dict[str, str]]:
    """Sends a request in `pieces` SLOW_GAP_S apart; its answer's status and headers (the
    answer has a Content-Length, and the connection stays open)."""
    for piece in pieces:
        sock.sendall(piece)
        time.sleep(SLOW_GAP_S)
    sock.settimeout(10)
    received = b""
    while (answer := parse_answer(received)) is None:
        data = sock.recv(65536)
        assert data, f"closed without a whole answer: {received!r}"
        received += data
    return answer[:2]


def _slow_bytes() -> Iterator[bytes]:
    """A header line that never ends, a byte at a time."""
    return itertools.chain([b"X-Slow: "], itertools.repeat(b"a"))


def _assert_head_timed_out(exchange: Exchange) -> None:
    """408 in the terms of --header-timeout, then the close, at about the deadline."""
    assert exchange.closed_after_s is not None, exchange
    assert HEADER_TIMEOUT_S * 0.9 <= exchange.closed_after_s < HEADER_TIMEOUT_S + 15, exchange
    status, headers, body = exchange.answer()
    assert status == 408, exchange
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["timeout_s"] == HEADER_TIMEOUT_S
    assert "did not arrive whole within 1.5 s" in error["error"]
    assert "--header-timeout" in error["error"]


def _assert_closed_silently(exchange: Exchange, deadline_s: float) -> None:
    assert exchange.closed_after_s is not None, exchange
    assert deadline_s * 0.9 <= exchange.closed_after_s < deadline_s + 15, exchange
    assert exchange.received == b""


def _assert_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.log_path.read_text()


def test_a_trickled_head_gets_408_and_is_closed(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        exchange = _trickle(sock, b"POST /v1/events HTTP/1.1\r\nHost: x\r\n", _slow_bytes())
    _assert_head_timed_out(exchange)
    _assert_no_traceback(server)


def test_a_trickled_head_on_a_kept_alive_connection_gets_408(server: ServerProcess) -> None:
    """The deadline starts again for each request on a connection."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert _exchange(sock, [METRICS])[0] == 200
        time.sleep(HEADER_TIMEOUT_S)  # idle within uvicorn's keep-alive timeout (5 s)
        exchange = _trickle(sock, b"GET /metrics HTTP/1.1\r\n", _slow_bytes())
    _assert_head_timed_out(exchange)


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        exchange = _trickle(sock, b"", [])
    _assert_closed_silently(exchange, HEADER_TIMEOUT_S)


def test_blank_lines_between_requests_do_not_hold_the_connection(server: ServerProcess) -> None:
    """Blank lines before a request line are allowed (RFC 9112 §2.2) and begin no request;
    each one used to reset uvicorn's keep-alive timeout."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert _exchange(sock, [METRICS])[0] == 200
        exchange = _trickle(sock, b"\r\n", itertools.repeat(b"\r\n"))
    _assert_closed_silently(exchange, HEADER_TIMEOUT_S)


def test_slow_heads_whole_within_the_deadline_are_answered_on_one_connection(
    server: ServerProcess,
) -> None:
    """Each head in 4 pieces over about 0.4 s, three requests on one kept-alive connection,
    longer together than the deadline."""
    pieces = [METRICS[:5], METRICS[5:20], METRICS[20:30], METRICS[30:]]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for _ in range(3):
            status, headers = _exchange(sock, pieces)
            assert status == 200
            assert "connection" not in headers  # kept open
            time.sleep(SLOW_GAP_S)


def test_a_body_trickled_after_its_early_answer_is_cut_off(server: ServerProcess) -> None:
    """413 is answered from the Content-Length; the body the client goes on sending is
    read and dropped until the body deadline, then the connection is closed."""
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {TOO_LARGE}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        exchange = _trickle(sock, head, itertools.repeat(b" "), past_answer=True)
    assert exchange.closed_after_s is not None, exchange
    assert BODY_TIMEOUT_S * 0.9 <= exchange.closed_after_s < BODY_TIMEOUT_S + 15, exchange
    assert exchange.answer()[0] == 413
    _assert_no_traceback(server)


def test_a_body_that_follows_its_early_answer_promptly_keeps_the_connection(
    server: ServerProcess,
) -> None:
    """As an HTTP client that sends a whole upload before it reads the answer (the 17 MiB
    one of test_api) expects; then the connection serves the next request."""
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        status, headers = _exchange(sock, [head])
        assert status == 415
        assert "connection" not in headers
        sock.sendall(b"x" * 1000)
        time.sleep(BODY_TIMEOUT_S)  # past the body deadline: that body was whole in time
        assert _exchange(sock, [METRICS])[0] == 200


def test_the_mesh_listener_has_the_same_deadlines(tmp_path: Path) -> None:
    """Over TLS (no client certificate): a trickled head gets 408; a batch answered 401
    before its body is read, whose body trickles on, is cut off; a slow head goes through."""
    with mesh_server(tmp_path / "data", DEADLINES) as mesh:
        context = ssl.create_default_context(cadata=mesh.bundle().decode())
        context.check_hostname = False
        port = int(mesh.mesh_url.rsplit(":", 1)[1])

        def connect() -> ssl.SSLSocket:
            return context.wrap_socket(socket.create_connection(("127.0.0.1", port)))

        with connect() as sock:
            exchange = _trickle(sock, b"POST /v1/events HTTP/1.1\r\nHost: x\r\n", _slow_bytes())
        _assert_head_timed_out(exchange)

        head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        with connect() as sock:
            exchange = _trickle(sock, head, itertools.repeat(b" "), past_answer=True)
        assert exchange.closed_after_s is not None, exchange
        assert BODY_TIMEOUT_S * 0.9 <= exchange.closed_after_s < BODY_TIMEOUT_S + 15
        assert exchange.answer()[0] == 401

        bundle = b"GET /v1/identity/bundle HTTP/1.1\r\nHost: x\r\n\r\n"
        with connect() as sock:
            assert _exchange(sock, [bundle[:10], bundle[10:30], bundle[30:]])[0] == 200
    _assert_no_traceback(mesh.server)


ANSWERS = 8  # pipelined answers of about 1 MB each: more than loopback's socket buffers hold


@pytest.fixture(scope="module")
def one_place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with one place per listener, and 1,000 events for answers of about 1 MB."""
    data = tmp_path_factory.mktemp("slow-readers") / "data"
    extra = [*DEADLINES, "--max-connections", "1", "--otlp-grpc", "off"]
    with ServerProcess(data, extra=extra) as running:
        body = encode_ndjson(generate(1000, seed=31))
        headers = {"content-type": "application/x-ndjson"}
        assert httpx.post(running.url + "/v1/events", content=body, headers=headers).is_success
        yield running
    _assert_no_traceback(running)


def _large_answers(server: ServerProcess) -> bytes:
    token = server.auth["authorization"]
    one = f"GET /v1/events?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n"
    return ANSWERS * one.encode()


def _reader(server: ServerProcess) -> socket.socket:
    """A connection as over a network, not loopback: Ethernet's segment size and a 64 KiB
    receive buffer (with loopback's 64 KiB segments the server's kernel took megabytes)."""
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", server.port))
    return sock


def _place_free(server: ServerProcess) -> bool:
    """Whether a new client is served on the listener's only place (not refused)."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        status, _ = _exchange(sock, [METRICS])
    assert status in (200, 503)
    return status == 200


def test_a_client_that_stops_reading_its_answers_is_cut_off(one_place: ServerProcess) -> None:
    """The answers wait in the server's write buffer for a client that never reads: past
    --body-timeout without any of it read, the connection is aborted and its place free.
    Closing it waited for the buffer to drain, for ever, holding the place."""
    with _reader(one_place) as sock:
        sock.sendall(_large_answers(one_place))
        start = time.monotonic()
        time.sleep(0.5)
        assert not _place_free(one_place)  # held while its answers are written
        while not _place_free(one_place):
            assert time.monotonic() - start < BODY_TIMEOUT_S + 15, "still held"
            time.sleep(0.2)
        assert time.monotonic() - start >= BODY_TIMEOUT_S * 0.9
        sock.settimeout(LIMIT_S)
        with pytest.raises(ConnectionResetError):  # aborted: what it had not read is gone
            while sock.recv(65536):
                pass


def test_a_slow_but_steady_reader_gets_all_its_answers(one_place: ServerProcess) -> None:
    """Reading goes on, slower than the answers come: each --body-timeout some of the
    buffer went, so the connection is kept for as long as that takes."""
    with _reader(one_place) as sock:
        sock.sendall(_large_answers(one_place))
        sock.settimeout(LIMIT_S)
        start = time.monotonic()
        received = bytearray()
        while received.count(b"HTTP/1.1 200 OK") < ANSWERS or not received.endswith(b"}"):
            data = sock.recv(32768)
            assert data, "closed before the last answer"
            received += data
            time.sleep(0.02)  # about 1.5 MB/s at most
        assert time.monotonic() - start > BODY_TIMEOUT_S  # longer than one deadline
