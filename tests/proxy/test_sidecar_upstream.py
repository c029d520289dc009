"""The sidecar's upstream side over real sockets and real mTLS: pooled connections the app
closes while idle, header timeouts on kept-alive connections, and what outbound events say
about the server's certificate."""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.loopback import Listener
from tests.proxy.mesh_fixture import Mesh, events_of, mesh_context, spiffe

pytestmark = pytest.mark.integration

IDLE_CLOSE_S = 0.003  # the app's keep-alive timeout: shorter than any proxy would guess
HEADER_TIMEOUT_S = 1.0  # payments' inbound sidecar: a request head must arrive within this
IDLE_TIMEOUT_S = 8.0  # and a kept-alive connection may idle this long before the next one


class ClosingApp:
    """An HTTP/1.1 app that closes a kept-alive connection when the next request has not
    begun ~3 ms after its last response (the first request of a connection may take its
    time). A request that arrives just as it closes is never read: the kernel answers it
    with a reset, as a real server's would."""

    def __init__(self) -> None:
        self._listener = Listener(self._serve)
        self.port = self._listener.port

    @property
    def connections(self) -> int:
        return self._listener.accepted

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        with conn:
            conn.settimeout(10)
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:  # the idle timeout, or the proxy went away
                        return
                    if not data:
                        return
                    buffer += data
                    conn.settimeout(10)  # a request has begun
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1]
                body = b"served " + path
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                conn.settimeout(IDLE_CLOSE_S)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def app() -> Iterator[ClosingApp]:
    app = ClosingApp()
    yield app
    app.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("upstream"))


def outbound(service: str, listen: int, upstream: int, **extra: str) -> dict[str, str]:
    """An outbound entry of orders' sidecar: `service` at `upstream`, as `spiffe(service)`."""
    return {
        "service": service,
        "listen": address(listen),
        "upstream": address(upstream),
        "identity": str(spiffe(service)),
        **extra,
    }


@pytest.fixture(scope="module")
def ports(mesh: Mesh, app: ClosingApp) -> dict[str, int]:
    """payments (the closing app) behind an inbound sidecar with a 1 s header timeout and an
    8 s idle timeout; ledgerdb (TCP echo) behind another; orders calls both outbound."""
    ports = {name: free_port() for name in ("pay_in", "orders_out", "tcp_in", "tcp_out")}
    mesh.sidecar(
        "payments",
        {
            "inbound": {"listen": address(ports["pay_in"]), "app": address(app.port)},
            "limits": {"header_timeout_s": HEADER_TIMEOUT_S, "idle_timeout_s": IDLE_TIMEOUT_S},
        },
    )
    mesh.echo_sidecar("ledgerdb", ports["tcp_in"])
    mesh.sidecar(
        "orders",
        {
            "outbound": [
                outbound("payments", ports["orders_out"], ports["pay_in"]),
                outbound("ledgerdb", ports["tcp_out"], ports["tcp_in"], protocol="tcp"),
            ]
        },
    )
    return ports


def test_app_closing_idle_connections_fails_no_request(
    mesh: Mesh, ports: dict[str, int], app: ClosingApp
) -> None:
    """Regression: 100 sequential GETs gave {200: 87, 503: 12, 502: 1}; the inbound sidecar
    reused pooled connections the app had just closed ("upstream_reset … Connection reset
    by peer"). Idempotent requests that lose a reused connection before any response byte are
    now sent again on a fresh one, and each request is still one event per side."""
    n = 100
    connections_before = app.connections
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{ports['orders_out']}", timeout=10) as client:
        for i in range(n):
            response = client.get(f"/idle/{i}", headers={"x-request-id": f"idle-{i}"})
            statuses[response.status_code] += 1
            assert response.status_code != 200 or response.text == f"served /idle/{i}"
            time.sleep((i % 5) / 1000)  # land before, at and after the app's 3 ms close
    assert statuses == {200: n}
    assert app.connections > connections_before + 1  # the app really did close connections
    events = events_of(mesh, "idle-", 2 * n)
    per_side = Counter((e["http"]["request_id"], e["direction"]) for e in events)
    assert len(per_side) == 2 * n and set(per_side.values()) == {1}  # one event per side
    for event in events:
        assert event["outcome"] == "success" and "error" not in event, event
        assert event["http"]["status"] == 200 and event["http"]["method"] == "GET"
        assert event["http"]["response_bytes"] == len(f"served {event['http']['path']}")
        assert "envoy.response_flags" not in event.get("labels", {})


def read_response(conn: ssl.SSLSocket) -> bytes:
    """One response with a content-length (what the app and the sidecar send here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(4096)
    return head


def test_slowloris_on_a_kept_alive_connection_gets_the_header_timeout(
    mesh: Mesh, ports: dict[str, int]
) -> None:
    """Regression: after one full request, a second head trickled in got its 408 only after
    the 8 s idle timeout; the idle timeout is for the first byte of the next request, the
    rest of its head has the 1 s header timeout like the first request's."""
    context = ssl.create_default_context(cafile=mesh.data / "ca" / "ca.pem")
    context.check_hostname = False
    context.load_cert_chain(*mesh.identity_files("orders"))
    raw = socket.create_connection(("127.0.0.1", ports["pay_in"]), timeout=5)
    with context.wrap_socket(raw) as conn:
        conn.sendall(b"GET /first HTTP/1.1\r\nHost: payments\r\nx-request-id: loris-1\r\n\r\n")
        assert read_response(conn).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # idle longer than the header timeout: still kept alive
        trickle = b"GET /second HTTP/1.1\r\nHost: payments\r\nx-slow: " + b"a" * 1000
        started = time.monotonic()
        conn.settimeout(0.25)
        reply = b""
        for byte in trickle:
            try:
                conn.sendall(bytes([byte]))
                reply += conn.recv(1000)
            except TimeoutError:
                continue
            except (ssl.SSLError, ConnectionError):
                break
            if not reply or b"\r\n" in reply:
                break
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply
    # Checked: which timeout cut the head. The header timeout fires HEADER_TIMEOUT_S after
    # the head began; the idle timeout (the regression) IDLE_TIMEOUT_S after the first
    # response was sent, about 8 - 1.5 = 6.5 s after `started` since its clock ran through
    # the sleep above. The bound is the configured header timeout plus a generous 5 s for a
    # loaded machine, and stays below 6.5 s so that the regression still fails it.
    assert waited < HEADER_TIMEOUT_S + 5.0
    [event] = mesh.wait_events(
        lambda e: (
            e.get("error", {}).get("type") == "stream_idle_timeout"
            and e["reporter"] == str(spiffe("payments"))
        )
    )
    assert event["http"]["status"] == 408


def leaf_of(mesh: Mesh, name: str) -> x509.Certificate:
    cert, _ = mesh.identity_files(name)
    return x509.load_pem_x509_certificates(cert.read_bytes())[0]


def test_outbound_http_event_names_the_server_certificate(
    mesh: Mesh, ports: dict[str, int]
) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/tls", headers={"x-request-id": "out-tls"}
    )
    assert response.status_code == 200
    [outbound] = [e for e in events_of(mesh, "out-tls", 2) if e["direction"] == "outbound"]
    server = leaf_of(mesh, "payments")
    assert outbound["tls"] == {
        "mutual": True,
        "version": "TLSv1.3",
        "peer_cert_sha256": server.fingerprint(hashes.SHA256()).hex(),
        "peer_not_after": int(server.not_valid_after_utc.timestamp()),
    }
    assert outbound["destination"]["identity"] == str(spiffe("payments"))


def test_outbound_tcp_event_names_the_server_certificate(mesh: Mesh, ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports["tcp_out"]), timeout=5) as conn:
        conn.sendall(b"tls details")
        assert conn.recv(100) == b"tls details"
    [outbound] = mesh.wait_events(
        lambda e: (
            e["kind"] == "tcp"
            and e["direction"] == "outbound"
            and e["tcp"].get("sent_bytes") == len(b"tls details")
        )
    )
    server = leaf_of(mesh, "ledgerdb")
    assert outbound["tls"]["peer_cert_sha256"] == server.fingerprint(hashes.SHA256()).hex()
    assert outbound["tls"]["peer_not_after"] == int(server.not_valid_after_utc.timestamp())
    assert outbound["destination"]["identity"] == str(spiffe("ledgerdb"))
