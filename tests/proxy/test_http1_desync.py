"""Request/response framing through a real sidecar, over real sockets: what the app receives on
the wire must be framed exactly as the sidecar framed it (what policy and the audit event saw),
whatever the caller wrote (RFC 9110, RFC 9112; the classic desync and smuggling attacks).

The app is a raw HTTP/1.1 server that records every request head and body it reads, so a test
can compare the bytes the app got with the request the caller sent and the event recorded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.loopback import Listener
from tests.proxy.mesh_fixture import Mesh, mesh_context

pytestmark = pytest.mark.integration


class RecordingApp:
    """A strict HTTP/1.1 app: reads each request by its Content-Length or chunked framing and
    records (head lines, body). Special paths answer in unusual ways (see `_answer`)."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[bytes], bytes]] = []
        self.lock = threading.Lock()
        self._listener = Listener(self._serve)
        self.port = self._listener.port

    def requests_with(self, marker: bytes) -> list[tuple[list[bytes], bytes]]:
        with self.lock:
            return [(head, body) for head, body in self.seen if any(marker in f for f in head)]

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(10)
        buffer = b""

        def more() -> bool:
            nonlocal buffer
            try:
                data = conn.recv(65536)
            except OSError:
                return False
            buffer += data
            return bool(data)

        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not more():
                        return
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                fields = {
                    line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip()
                    for line in lines[1:]
                }
                body = b""
                if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        while b"\r\n" not in buffer:
                            if not more():
                                return
                        size_line, buffer = buffer.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        if size == 0:
                            while not buffer.startswith(b"\r\n") and b"\r\n\r\n" not in buffer:
                                if not more():
                                    return
                            end = 2 if buffer.startswith(b"\r\n") else buffer.index(b"\r\n\r\n") + 4
                            lines += [
                                b"trailer " + t for t in buffer[: end - 2].split(b"\r\n") if t
                            ]
                            buffer = buffer[end:]
                            break
                        while len(buffer) < size + 2:
                            if not more():
                                return
                        body, buffer = body + buffer[:size], buffer[size + 2 :]
                elif b"content-length" in fields:
                    if not fields[b"content-length"].isdigit():  # as strict apps do: refused
                        with self.lock:
                            self.seen.append((lines, b"<refused>"))
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        return
                    length = int(fields[b"content-length"])
                    while len(buffer) < length:
                        if not more():
                            return
                    body, buffer = buffer[:length], buffer[length:]
                with self.lock:
                    self.seen.append((lines, body))
                conn.sendall(self._answer(lines[0]))

    def _answer(self, request_line: bytes) -> bytes:
        path = request_line.split(b" ")[1]
        if path == b"/dup-length":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"
        if path == b"/trailer-hop":
            return (
                b"HTTP/1.1 200 OK\r\nconnection: x-hop\r\ntransfer-encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\nx-hop: secret\r\nx-kept: yes\r\n\r\n"
            )
        if path == b"/interim":
            return (
                b"HTTP/1.1 103 Early Hints\r\nlink: </x.css>; rel=preload\r\n"
                b"connection: x-hop\r\nx-hop: secret\r\n\r\n"
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            )
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def app() -> Iterator[RecordingApp]:
    app = RecordingApp()
    yield app
    app.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("desync"))


@pytest.fixture(scope="module")
def port(mesh: Mesh, app: RecordingApp) -> int:
    return plaintext_inbound(mesh, app.port)


def plaintext_inbound(mesh: Mesh, app_port: int) -> int:
    """payments' inbound sidecar, plaintext (mtls DISABLE) so a test writes raw bytes to it;
    its port once it accepts."""
    port = free_port()
    mesh.sidecar(
        "payments",
        {"inbound": {"listen": address(port), "app": address(app_port), "mtls": "DISABLE"}},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return port


def exchange(port: int, raw: bytes) -> bytes:
    """Write `raw` as is and read until the sidecar closes: every request here asks it to
    (`connection: close`, or HTTP/1.0). No quiet-time cut-off, which took a sidecar stalled
    on a loaded machine for one that had said all; the timeout is only a safety net."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(raw)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def field_lines(head: list[bytes], name: bytes) -> list[bytes]:
    return [line for line in head[1:] if line.lower().startswith(name + b":")]


def event_of(mesh: Mesh, request_id: str) -> dict[str, Any]:
    [event] = mesh.wait_events(lambda e: e.get("http", {}).get("request_id") == request_id)
    return event


@pytest.mark.parametrize(
    "framing",
    [b"content-length: 5, 5\r\n", b"content-length: 5\r\ncontent-length: 5\r\n"],
    ids=["list", "lines"],
)
def test_duplicated_content_length_reaches_the_app_as_one(
    mesh: Mesh, port: int, app: RecordingApp, framing: bytes
) -> None:
    """RFC 9110 §8.6: a recipient of `Content-Length: 42, 42` (or the same value on several
    lines) "MUST either reject the message as invalid or replace the duplicated field values
    with a single valid Content-Length field containing that decimal value prior to determining
    the message body length or forwarding the message"."""
    marker = b"dup-cl-%d" % framing.count(b"\n")
    answer = exchange(
        port,
        b"POST /upload HTTP/1.1\r\nhost: payments\r\nx-request-id: %s\r\n%sconnection: close"
        b"\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nhost: payments\r\n\r\n" % (marker, framing),
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(head, body)] = app.requests_with(marker)
    assert body == b"hello"
    assert field_lines(head, b"content-length") == [b"content-length: 5"], head
    assert not app.requests_with(b"/smuggled")


def test_duplicated_content_length_in_a_response_reaches_the_caller_as_one(
    port: int,
) -> None:
    """RFC 9110 §8.6, the same rule for a response the sidecar forwards."""
    answer = exchange(
        port, b"GET /dup-length HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer
    lines = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    assert lines == [b"content-length: 2"] and body == b"ok", answer


def test_a_body_keeps_its_framing_when_connection_names_content_length(
    mesh: Mesh, port: int, app: RecordingApp
) -> None:
    """RFC 9110 §7.6.1: the sidecar removes the fields Connection names, Content-Length too;
    it must then frame the body it forwards itself (RFC 9112 §6.3), so the app gets the
    content that the audit event counts, not a request without content."""
    answer = exchange(
        port,
        b"POST /upload HTTP/1.1\r\nhost: payments\r\nx-request-id: conn-cl\r\n"
        b"connection: content-length, close\r\ncontent-length: 5\r\n\r\nhello",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(_, body)] = app.requests_with(b"conn-cl")
    assert body == b"hello"
    event = event_of(mesh, "conn-cl")
    assert event["http"]["request_bytes"] == 5


def test_the_app_gets_the_host_policy_saw_when_connection_names_host(
    port: int, app: RecordingApp
) -> None:
    """RFC 9110 §7.6.1 removes a Host named in Connection, but a forwarded HTTP/1.1 request
    needs one (RFC 9112 §3.2): the one policy and routing used. The sidecar answered
    nothing and the app got no request."""
    answer = exchange(
        port,
        b"GET /h HTTP/1.1\r\nhost: payments\r\nx-request-id: conn-host\r\n"
        b"connection: host, close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(head, _)] = app.requests_with(b"conn-host")
    assert field_lines(head, b"host") == [b"host: payments"], head


def test_an_http10_request_without_host_is_forwarded_with_an_empty_host(
    port: int, app: RecordingApp
) -> None:
    """HTTP/1.0 needs no Host (RFC 9112 §3.2 requires it of HTTP/1.1), but the sidecar
    forwards HTTP/1.1, where a target URI without authority is sent with an empty Host
    (RFC 9112 §3.2: "a client MUST send a Host header field with an empty field value")."""
    answer = exchange(port, b"GET /h10 HTTP/1.0\r\nx-request-id: h10-no-host\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(head, _)] = app.requests_with(b"h10-no-host")
    assert field_lines(head, b"host") == [b"host: "], head


def test_upgrade_not_named_in_connection_is_not_offered_to_the_app(
    port: int, app: RecordingApp
) -> None:
    """RFC 9110 §7.8: a sender of Upgrade MUST also send the "upgrade" connection option;
    an Upgrade field without it was not offered to this hop (and Upgrade is hop-by-hop,
    §7.6.1), so the sidecar must not turn it into an upgrade offer to the app."""
    answer = exchange(
        port,
        b"GET /plain HTTP/1.1\r\nhost: payments\r\nx-request-id: bare-upgrade\r\n"
        b"upgrade: websocket\r\nconnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(head, _)] = app.requests_with(b"bare-upgrade")
    assert field_lines(head, b"upgrade") == [], head
    assert field_lines(head, b"connection") == [], head


def test_interim_responses_lose_their_hop_by_hop_fields(port: int) -> None:
    """RFC 9110 §7.6.1: an intermediary removes the fields a message's Connection names, and
    Connection itself, before forwarding it; a 1xx (RFC 9110 §15.2) is forwarded too."""
    answer = exchange(port, b"GET /interim HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")
    interim, _, final = answer.partition(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 103 "), answer
    assert b"link: </x.css>; rel=preload" in interim
    assert b"x-hop" not in interim.lower(), interim
    assert final.startswith(b"HTTP/1.1 200 "), answer


def test_trailer_fields_named_in_connection_are_not_forwarded(port: int, app: RecordingApp) -> None:
    """RFC 9110 §7.6.1: "remove any header or trailer field(s) from the message with the same
    name as the connection-option"."""
    answer = exchange(
        port,
        b"POST /t HTTP/1.1\r\nhost: payments\r\nx-request-id: hop-trailer\r\n"
        b"connection: x-hop, close\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-hop: secret\r\nx-kept: yes\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(head, body)] = app.requests_with(b"hop-trailer")
    assert body == b"hello"
    assert b"trailer x-kept: yes" in head
    assert not [line for line in head if b"x-hop" in line.lower()], head


def test_response_trailer_fields_named_in_connection_are_not_forwarded(port: int) -> None:
    """RFC 9110 §7.6.1, the same rule for the trailers of a response the sidecar forwards."""
    answer = exchange(
        port, b"GET /trailer-hop HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b"\r\n\r\n") and b"x-kept: yes\r\n" in answer, answer
    assert b"x-hop" not in answer.lower(), answer


def test_fields_no_trailer_may_carry_do_not_reach_the_app(port: int, app: RecordingApp) -> None:
    """RFC 9110 §6.5.1: framing, routing, authentication and content-processing fields are
    not allowed in trailers; and x-forwarded-client-cert reaches the app only as the inbound
    sidecar sets it. An app merging trailers into its headers would take these as said."""
    answer = exchange(
        port,
        b"POST /t HTTP/1.1\r\nhost: payments\r\nx-request-id: bad-trailers\r\n"
        b"connection: close\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-forwarded-client-cert: By=forged;URI=spiffe://td/ns/x/sa/admin\r\n"
        b"host: evil\r\ncontent-length: 99\r\nauthorization: Bearer forged\r\nx-kept: yes\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    [(head, body)] = app.requests_with(b"bad-trailers")
    assert body == b"hello"
    trailers = [line for line in head if line.startswith(b"trailer ")]
    assert trailers == [b"trailer x-kept: yes"], trailers
