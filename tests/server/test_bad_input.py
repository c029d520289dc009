"""Bad input against a real server process: each refusal says what to fix, nothing is stored,
and nothing reaches the server's log as an unhandled exception."""

from __future__ import annotations

import gzip
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditmesh.events import canonical_bytes
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate
from tests.server.meshserver import mesh_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("bad-input") / "data"
    with ServerProcess(data) as running:
        yield running


def _entries(server: ServerProcess) -> int:
    """Entries in the ledger, as /metrics counts them."""
    found = re.search(
        r"^auditmesh_ledger_entries (\S+)$", httpx.get(server.url + "/metrics").text, re.M
    )
    assert found is not None
    return int(float(found.group(1)))


def test_a_body_cut_short_by_the_client_stores_nothing_and_logs_no_traceback(
    server: ServerProcess,
) -> None:
    event = canonical_bytes(generate(1, seed=801)[0])
    before = _entries(server)
    head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(event) + 99)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + event)  # 99 bytes short, then the client goes away
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # closed: nobody is left to answer
    # The server goes on; the batch it never received whole was not stored.
    assert _entries(server) == before
    assert "Traceback" not in server.log_path.read_text()


def test_a_compressed_batch_is_refused_with_415_naming_the_coding(server: ServerProcess) -> None:
    event = canonical_bytes(generate(1, seed=802)[0])
    before = _entries(server)
    response = httpx.post(
        server.url + "/v1/events",
        content=gzip.compress(event),
        headers={"content-encoding": "gzip"},
    )
    assert response.status_code == 415  # RFC 9110 §15.5.16: a content coding not accepted
    assert "gzip" in response.json()["error"] and "uncompressed" in response.json()["error"]
    assert response.headers["accept-encoding"] == "identity"
    assert _entries(server) == before
    plain = httpx.post(
        server.url + "/v1/events", content=event, headers={"content-encoding": "identity"}
    )
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-protobuf", "multipart/form-data; boundary=x", "text/json"],
)
def test_a_batch_of_another_content_type_is_refused_with_415_naming_the_accepted(
    server: ServerProcess, content_type: str
) -> None:
    event = canonical_bytes(generate(1, seed=803)[0])
    before = _entries(server)
    response = httpx.post(
        server.url + "/v1/events", content=event, headers={"content-type": content_type}
    )
    assert response.status_code == 415  # RFC 9110 §15.5.16
    error = response.json()["error"]
    assert repr(content_type.split(";")[0]) in error
    assert "application/json, application/x-ndjson" in error
    assert response.headers["accept-post"] == "application/json, application/x-ndjson"
    assert _entries(server) == before


@pytest.mark.parametrize(
    ("seed", "content_type"),
    [
        (804, None),  # as before types were checked: told apart by content
        (805, "application/x-ndjson"),  # the sidecar's emitter, `auditmesh ingest`, bench
        (806, "application/json"),
        (807, "Application/JSON; charset=utf-8"),
        (808, "application/x-www-form-urlencoded"),  # curl --data-binary, as README shows it
    ],
)
def test_a_batch_is_taken_as_json_as_ndjson_untyped_and_as_curl_sends_it(
    server: ServerProcess, seed: int, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    as_array = b"[" + b",".join(canonical_bytes(e) for e in generate(2, seed=seed)) + b"]"
    response = httpx.post(server.url + "/v1/events", content=as_array, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["fresh_from"] == response.json()["indices"][0]  # stored now


@pytest.mark.parametrize("given", ["+1", " 1", "1 ", "\u0661", "1_0", "0x1"])
def test_consistency_sizes_are_plain_decimal_numbers(server: ServerProcess, given: str) -> None:
    """int() would take a sign, spaces, underscores and other scripts' digits (١)."""
    response = httpx.get(server.url + "/v1/proof/consistency", params={"from": given, "to": "1"})
    assert response.status_code == 400
    assert "?from=N&to=M" in response.json()["error"]


def test_a_bad_tile_path_is_named_once(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/log/tile/0/x000/000")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.count("tile/0/x000/000") == 1 and "leading zero group" in error


def test_a_size_past_any_log_says_what_range_is_allowed(server: ServerProcess) -> None:
    for huge in (str(2**64), "9" * 5000):
        response = httpx.get(server.url + "/v1/proof/consistency", params={"from": 0, "to": huge})
        assert response.status_code == 400
        assert "need 0 <= from <= to <=" in response.json()["error"]


def test_a_join_body_cut_short_logs_no_traceback(tmp_path: Path) -> None:
    """The mesh listener's join takes a body from anyone with a TLS connection."""
    with mesh_server(tmp_path / "data") as mesh:
        context = ssl.create_default_context(cadata=mesh.bundle().decode())
        context.check_hostname = False
        port = int(mesh.mesh_url.rsplit(":", 1)[1])
        head = b"POST /v1/identity/join HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw) as sock:
                sock.sendall(head + b'{"token": "')  # 489 bytes short, then closed
        with mesh.anonymous() as client:
            assert client.get("/v1/identity/bundle").status_code == 200
    assert "Traceback" not in mesh.server.log_path.read_text()


def _cut_short(server: ServerProcess, path: str, headers: str = "") -> None:
    """A POST whose body stops 99 bytes before its Content-Length, then the client leaves."""
    body = b'{"a": 1}'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body) + 99}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(1024):  # whatever is answered, until the server closes
            pass


def test_otlp_and_console_bodies_cut_short_log_no_traceback(server: ServerProcess) -> None:
    """As for /v1/events: the OTLP/HTTP receiver and the console's JSON posts logged a
    ClientDisconnect traceback for a body the client never finished."""
    token = server.auth["authorization"]
    _cut_short(server, "/v1/logs")
    _cut_short(server, "/v1/traces")
    _cut_short(server, "/console/api/layout", f"Authorization: {token}\r\n")
    httpx.get(server.url + "/log/checkpoint")  # the server still answers
    assert "Traceback" not in server.log_path.read_text()


def test_a_console_post_over_its_limit_is_refused_before_it_is_read(
    server: ServerProcess,
) -> None:
    """Its declared length is enough: the console read the whole body first (200 MB posts held
    in memory), and answered only once all of it had come."""
    token = server.auth["authorization"]
    head = (
        "POST /console/api/layout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {token}\r\nContent-Length: {200 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b"{")  # the rest never comes
        sock.settimeout(30)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
