"""The body deadline (`--body-timeout`, httpbody.BodyDeadline) against real server processes
over raw sockets: a body trickled past it is answered 408 and its connection closed, and
nothing of it is stored; a slow body that is whole within it goes through."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from google.rpc import code_pb2, status_pb2

from auditmesh.events import canonical_bytes
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import make_csr
from auditmesh.identity.workload import new_private_key
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate
from tests.server.meshserver import mesh_server
from tests.server.rawhttp import parse_answer
from tests.server.test_metrics import samples
from tests.server.test_metrics_ingest import otlp_requests

pytestmark = pytest.mark.integration

TIMEOUT_S = 2.0  # the servers' --body-timeout in these tests
DEADLINE = ["--body-timeout", f"{TIMEOUT_S:g}"]
TRICKLE_GAP_S = 0.5  # between pieces of a body that takes twice the deadline
SLOW_GAP_S = 0.1  # between pieces of a body that is whole in a quarter of it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("body-deadline") / "data"
    with ServerProcess(data, extra=[*DEADLINE, "--otlp-grpc", "off"]) as running:
        yield running


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    after_s: float  # from sending the request head to the whole answer


def _pieces(body: bytes, count: int) -> list[bytes]:
    step = -(-len(body) // count)
    return [body[i : i + step] for i in range(0, len(body), step)]


def _post_in_pieces(
    sock: socket.socket, head: bytes, pieces: Sequence[bytes], gap_s: float
) -> Answer:
    """Sends `head`, then `pieces` `gap_s` apart while the server has not answered; returns
    the answer as soon as it is whole (the connection stays open)."""
    start = time.monotonic()
    sock.sendall(head)
    sock.settimeout(gap_s)
    left = list(pieces)
    received = b""
    while (parsed := parse_answer(received)) is None:
        assert time.monotonic() - start < 60, f"no whole answer within 60 s: {received!r}"
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if left:
                try:
                    sock.sendall(left.pop(0))
                except OSError:  # the server answered and closed meanwhile: read the answer
                    left.clear()
            continue
        assert data, f"closed without a whole answer: {received!r}"
        received += data
    return Answer(*parsed, after_s=time.monotonic() - start)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closes the connection (within 10 s)."""
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed, and our last piece came after that
        return True
    except TimeoutError:
        return False


def _head(path: str, length: int, content_type: str, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _entries(server: ServerProcess) -> int:
    found = re.search(
        r"^auditmesh_ledger_entries (\S+)$", httpx.get(server.url + "/metrics").text, re.M
    )
    assert found is not None
    return int(float(found.group(1)))


def _assert_timed_out(answer: Answer, status: int = 408) -> None:
    """`status` (408) within about the deadline, with the connection closed."""
    assert answer.status == status, answer
    assert TIMEOUT_S * 0.9 <= answer.after_s < TIMEOUT_S + 15, answer.after_s
    assert answer.headers["connection"] == "close"


def test_a_trickled_batch_gets_408_within_the_deadline_and_nothing_is_stored(
    server: ServerProcess,
) -> None:
    """Its 8 pieces would be whole after 3.5 s: the server stops waiting at 2 s."""
    event = generate(1, seed=901)[0]
    body = canonical_bytes(event)
    before = _entries(server)
    head = _head("/v1/events", len(body), "application/x-ndjson")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = _post_in_pieces(sock, head, _pieces(body, 8), TRICKLE_GAP_S)
        _assert_timed_out(answer)
        assert answer.headers["content-type"] == "application/json"
        assert b"\n" not in answer.body  # one line
        error = json.loads(answer.body)
        assert error["timeout_s"] == TIMEOUT_S
        assert "did not arrive whole within 2 s" in error["error"]
        assert "--body-timeout" in error["error"] and "send it again" in error["error"]
        assert _closed(sock)
    assert _entries(server) == before
    stored = httpx.get(f"{server.url}/v1/events/{event.id}", headers=server.auth)
    assert stored.status_code == 404
    assert "Traceback" not in server.log_path.read_text()


def test_a_slow_batch_whole_within_the_deadline_is_stored(server: ServerProcess) -> None:
    event = generate(1, seed=902)[0]
    body = canonical_bytes(event)
    head = _head("/v1/events", len(body), "application/x-ndjson")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = _post_in_pieces(sock, head, _pieces(body, 4), SLOW_GAP_S)
        assert answer.status == 200, answer
        assert "connection" not in answer.headers  # kept open for the next request
    stored = httpx.get(f"{server.url}/v1/events/{event.id}", headers=server.auth)
    assert stored.status_code == 200, stored.text


def test_a_trickled_otlp_export_gets_a_retryable_503_as_an_otlp_status(
    server: ServerProcess,
) -> None:
    """OTLP/HTTP answers failures with a google.rpc.Status in the request's encoding, and
    only 429, 502, 503 and 504 are retried ("Retryable Response Codes"): a batch that came
    too slowly is not bad data, so it gets 503 with Retry-After, not 408 (which an OTel SDK
    takes as final and drops the batch on)."""
    head = _head("/v1/logs", 5000, "application/x-protobuf")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = _post_in_pieces(sock, head, [b"\n"] * 20, TRICKLE_GAP_S)
        _assert_timed_out(answer, status=503)
        assert answer.headers["retry-after"] == "5"
        assert answer.headers["content-type"] == "application/x-protobuf"
        status = status_pb2.Status.FromString(answer.body)
        assert status.code == code_pb2.DEADLINE_EXCEEDED
        assert "did not arrive whole within 2 s" in status.message
        assert _closed(sock)
    head = _head("/v1/traces", 5000, "application/json")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = _post_in_pieces(sock, head, [b" "] * 20, TRICKLE_GAP_S)
        _assert_timed_out(answer, status=503)
        assert answer.headers["content-type"] == "application/json"
        assert "did not arrive whole" in json.loads(answer.body)["message"]


def _otlp_http_requests(server: ServerProcess) -> dict[tuple[str, str], float]:
    found = samples(httpx.get(server.url + "/metrics").text)
    return otlp_requests(found, "http")


def test_a_trickled_otlp_export_is_counted_as_a_timeout_not_as_invalid(
    server: ServerProcess,
) -> None:
    """auditmesh_otlp_requests_total counts an export whose body missed --body-timeout
    under result="timeout": its data was never whole, so not "invalid" (was "invalid").
    The count is made before the answer goes out, so the scrape after it sees it."""
    before = _otlp_http_requests(server)
    head = _head("/v1/logs", 5000, "application/x-protobuf")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = _post_in_pieces(sock, head, [b"\n"] * 20, TRICKLE_GAP_S)
        _assert_timed_out(answer, status=503)
    after = _otlp_http_requests(server)
    assert after.get(("logs", "timeout"), 0) == before.get(("logs", "timeout"), 0) + 1
    assert after.get(("logs", "invalid"), 0) == before.get(("logs", "invalid"), 0)


def test_a_trickled_console_post_gets_408(server: ServerProcess) -> None:
    token = server.auth["authorization"]
    head = _head("/console/api/layout", 5000, "application/json", f"Authorization: {token}\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        answer = _post_in_pieces(sock, head, [b" "] * 20, TRICKLE_GAP_S)
        _assert_timed_out(answer)
        assert json.loads(answer.body)["timeout_s"] == TIMEOUT_S
        assert _closed(sock)
    assert "Traceback" not in server.log_path.read_text()


def test_a_trickled_join_on_the_mesh_listener_gets_408_and_keeps_its_token(
    tmp_path: Path,
) -> None:
    """The join endpoint takes a body from anyone with a TLS connection. A join past the
    deadline redeems nothing: its token then joins, slowly but within the deadline."""
    with mesh_server(tmp_path / "data", DEADLINE) as mesh:
        token = mesh.token(SpiffeId.kubernetes("cluster.local", "shop", "orders"))
        csr = make_csr(new_private_key()).decode()
        body = json.dumps({"token": token, "csr": csr}).encode()
        head = _head("/v1/identity/join", len(body), "application/json")
        context = ssl.create_default_context(cadata=mesh.bundle().decode())
        context.check_hostname = False
        port = int(mesh.mesh_url.rsplit(":", 1)[1])
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as sock:
            answer = _post_in_pieces(sock, head, _pieces(body, 8), TRICKLE_GAP_S)
            _assert_timed_out(answer)
            assert "did not arrive whole" in json.loads(answer.body)["error"]
            assert _closed(sock)
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as sock:
            answer = _post_in_pieces(sock, head, _pieces(body, 4), SLOW_GAP_S)
            assert answer.status == 200, answer
            assert "BEGIN CERTIFICATE" in json.loads(answer.body)["certificate"]
    assert "Traceback" not in mesh.server.log_path.read_text()
