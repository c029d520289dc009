"""An SVID is checked at each request on a kept-alive connection, not only at its handshake:
X509-SVID §5.1 asks for RFC 5280 path validation, whose §6.1.3 (a)(2) wants the validity
period (the SVID's, and the CA's that signed it) to include the current time. Inbound, a
request on a connection whose caller's SVID or CA has expired since is refused like such a
handshake (an `authn` failure) and the connection closed; outbound, a pooled connection is
not reused once the server's SVID, or the sidecar's own, has expired: it dials again. A
connection relayed as bytes (TCP mode, a WebSocket after 101) has no request to check: it is
closed as that moment passes, and its event says why; so is an HTTP exchange whose request or
response body is still streaming then."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.identity.ca import CA_VALIDITY, MeshCA, build_root
from auditmesh.identity.tokens import JoinTokens
from auditmesh.identity.workload import Credentials, key_to_pem, self_issue
from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.identity.forge import forge_leaf, load_ca_cert, load_ca_key
from tests.proxy.mesh_fixture import (
    TD,
    AppHandler,
    Mesh,
    events_of,
    mesh_context,
    spiffe,
    upgrade,
)
from tests.proxy.test_sidecar import tls_to
from tests.proxy.test_sidecar_upstream import read_response

pytestmark = pytest.mark.integration

PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("expiry"))


def wait_past(not_after: datetime) -> None:
    """Until a notAfter is over on this host's clock, the sidecars' too, with the second it
    names (path validation counts times in whole seconds)."""
    time.sleep(max(0.0, (not_after - datetime.now(UTC)).total_seconds()) + 1.2)


def request(path: str, request_id: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\nx-request-id: {request_id}\r\n\r\n".encode()


def closed(conn: socket.socket) -> bool:
    """The sidecar closed `conn`; False when nothing came within its timeout."""
    try:
        return conn.recv(4096) == b""
    except (ssl.SSLError, ConnectionError):
        return True
    except TimeoutError:
        return False


@dataclass(frozen=True)
class ShortLived:
    """An inbound sidecar (STRICT) and a caller's SVID that, or whose CA, expires soon."""

    port: int  # the sidecar's
    leaf: x509.Certificate
    until: datetime  # when the SVID or its CA expires
    files: tuple[Path, Path]  # the SVID's and its key's

    def event(self, mesh: Mesh) -> dict[str, Any]:
        """The one event that names this SVID with an error."""
        fingerprint = self.leaf.fingerprint(hashes.SHA256()).hex()
        [event] = mesh.wait_events(
            lambda e: "error" in e and e.get("tls", {}).get("peer_cert_sha256") == fingerprint
        )
        return event


def short_lived_caller(
    mesh: Mesh, tmp_path: Path, name: str, expiring: str, inbound: dict[str, str]
) -> ShortLived:
    """`name`'s inbound sidecar (`inbound`: its app, protocol) trusting a second CA that
    expires in 8 s; `expiring` "svid": an SVID of the mesh CA for 3 s, "ca": a day's SVID of
    that CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_until = datetime.now(UTC) + timedelta(seconds=8)  # the sidecar starts meanwhile
    other_ca = build_root(TD, ca_key, now=ca_until - CA_VALIDITY)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(mesh.local.bundle_path.read_bytes() + other_ca.public_bytes(PEM))
    port = free_port()
    token = JoinTokens(mesh.data).mint(spiffe(name), now=datetime.now(UTC))
    mesh.sidecar(
        name,
        {
            "inbound": {"listen": address(port), "mtls": "STRICT", **inbound},
            "server": {"url": mesh.mesh_url, "bundle": str(bundle), "join_token": token},
        },
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    if expiring == "svid":  # an SVID of the mesh CA that expires before its CA
        issuer, issuer_key = load_ca_cert(mesh.data), load_ca_key(mesh.data)
        not_after: datetime | None = now + timedelta(seconds=3)
    else:  # a day's SVID of the other CA
        issuer, issuer_key, not_after = other_ca, ca_key, None
    caller = (str(spiffe("orders")),)
    leaf = forge_leaf(issuer, issuer_key, now=now, uris=caller, key=key, not_after=not_after)
    until = min(leaf.not_valid_after_utc, issuer.not_valid_after_utc)
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(leaf.public_bytes(PEM))
    key_file.write_bytes(key_to_pem(key))
    return ShortLived(port, leaf, until, (cert, key_file))


@pytest.mark.parametrize("expiring", ["svid", "ca"])
def test_a_request_after_the_callers_svid_or_ca_expired_is_refused(
    mesh: Mesh, tmp_path: Path, expiring: str
) -> None:
    """Regression: the second request, sent on the connection after the caller's SVID (or
    the second CA of the bundle that signed it) expired, reached the app."""
    name = f"pay-{expiring}"
    caller = short_lived_caller(mesh, tmp_path, name, expiring, {"app": app_of(mesh, name)})
    with tls_to(mesh, caller.port, caller.files) as conn:
        conn.sendall(request("/before", f"{name}-before"))
        assert read_response(conn).startswith(b"HTTP/1.1 200 ")
        wait_past(caller.until)
        conn.sendall(request("/after", f"{name}-after"))
        assert closed(conn), "answered on a connection whose caller's certificate expired"
    event = caller.event(mesh)
    assert event["kind"] == "authn"
    assert event["outcome"] == "failure" and event["reporter"] == str(spiffe(name))
    reason, words = {
        "svid": ("expired", "expired at"),
        "ca": ("untrusted", "not valid at validation time"),
    }[expiring]
    assert event["error"]["type"] == reason and words in event["error"]["message"]
    assert event["tls"]["peer_not_after"] == int(caller.leaf.not_valid_after_utc.timestamp())
    assert [e["http"]["path"] for e in events_of(mesh, name, 1)] == ["/before"]


def app_of(mesh: Mesh, name: str) -> str:
    """A new app for `name` (it echoes on /ws after 101): its address."""
    return address(mesh.start_app(name))


def tunnel(conn: socket.socket, request_id: str) -> None:
    """A WebSocket to the app over `conn` (HTTP, or TCP mode: the bytes are the same), and a
    ping it echoes."""
    received = upgrade(conn, request_id)
    assert received.startswith(b"HTTP/1.1 101 "), received
    conn.sendall(b"ping")
    while b"echo:ping" not in received:
        chunk = conn.recv(1000)
        assert chunk, f"closed after {received!r}"
        received += chunk


def assert_cut(event: dict[str, Any], protocol: str, end: str, words: str) -> None:
    """`event` is a relay's (TCP mode, or a WebSocket after 101) that the sidecar cut, or
    ("stream") an HTTP exchange's, cut while its response streamed."""
    if protocol == "tcp":
        assert event["kind"] == "tcp" and event["tcp"]["end"] == end
    elif protocol == "stream":
        assert event["http"]["path"] == "/stream" and event["http"]["status"] == 200
        assert event["http"]["response_bytes"] == len(TICK)
        assert "upgrade" not in event.get("labels", {})
    else:
        assert event["http"]["status"] == 101 and event["labels"]["upgrade"] == "websocket"
    assert event["outcome"] == "failure" and event["error"]["type"] == end
    assert words in event["error"]["message"]


@pytest.mark.parametrize(
    ("protocol", "expiring"), [("tcp", "svid"), ("tcp", "ca"), ("websocket", "svid")]
)
def test_an_inbound_relay_is_cut_when_the_callers_svid_or_ca_expires(
    mesh: Mesh, tmp_path: Path, protocol: str, expiring: str
) -> None:
    """Regression: TCP mode and a tunnel after 101 went on relaying after the caller's SVID
    (or its CA) expired; there is no request there to refuse."""
    name = f"relay-{protocol}-{expiring}"
    inbound = {"app": app_of(mesh, name), "protocol": "tcp" if protocol == "tcp" else "http"}
    caller = short_lived_caller(mesh, tmp_path, name, expiring, inbound)
    with tls_to(mesh, caller.port, caller.files) as conn:
        tunnel(conn, name)
        wait_past(caller.until)
        assert closed(conn), "relayed on after the caller's certificate expired"
    words = {"svid": "the caller's SVID expired at", "ca": "the CA that signed the caller's"}
    event = caller.event(mesh)
    assert event["reporter"] == str(spiffe(name)) and event["direction"] == "inbound"
    assert_cut(event, protocol, "peer_certificate_expired", words[expiring])


TICK = b"tick\n"


class StreamingHandler(AppHandler):
    """/stream: a chunked response whose first chunk comes at once and whose end never does;
    POST /upload: reads a request body until the connection closes, and never answers."""

    def do_GET(self) -> None:
        if self.path != "/stream":
            return super().do_GET()
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(TICK), TICK))
        self.wfile.flush()
        self._until_closed()

    def do_POST(self) -> None:
        if self.path != "/upload":
            return super().do_POST()
        self._until_closed()

    def _until_closed(self) -> None:
        with contextlib.suppress(OSError):
            while self.rfile.read1(4096):
                pass
        self.close_connection = True


@pytest.fixture
def streaming_app() -> Iterator[str]:
    """An app serving `StreamingHandler`: its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StreamingHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield address(server.server_address[1])
    server.shutdown()
    server.server_close()


STREAMS = {
    "response": b"GET /stream HTTP/1.1\r\nhost: x\r\nx-request-id: %s\r\n\r\n",
    "request": b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
    b"x-request-id: %s\r\n\r\n5\r\nhello\r\n",
}


def stream(conn: socket.socket, body: str, request_id: str) -> None:
    """Start an exchange whose `body` ("request" or "response") does not end; for a
    response, until its first chunk is here."""
    conn.sendall(STREAMS[body] % request_id.encode())
    received = b""
    while body == "response" and TICK not in received:
        chunk = conn.recv(1000)
        assert chunk, f"closed after {received!r}"
        received += chunk


def cut_off(conn: socket.socket, until: datetime) -> None:
    """Until the sidecar closes `conn`, which it must do as `until` passes (the request
    timeout, 60 s, is far off); fails when it is still open 10 s after."""
    conn.settimeout(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 10)
    try:
        while chunk := conn.recv(4096):
            assert not chunk.endswith(b"0\r\n\r\n"), "the stream ended of itself"
    except (ssl.SSLError, ConnectionError):
        pass
    except TimeoutError:
        pytest.fail("the exchange went on after a certificate it was authenticated with expired")
    assert datetime.now(UTC) >= until, "cut before the certificate expired"


@pytest.mark.parametrize("body", ["response", "request"])
def test_an_inbound_stream_is_cut_when_the_callers_svid_expires(
    mesh: Mesh, tmp_path: Path, streaming_app: str, body: str
) -> None:
    """Regression: a response (or request) body still streaming when the caller's SVID
    expired went on until the request timeout; only the next request was checked."""
    name = f"stream-{body}"
    caller = short_lived_caller(mesh, tmp_path, name, "svid", {"app": streaming_app})
    with tls_to(mesh, caller.port, caller.files) as conn:
        stream(conn, body, name)
        cut_off(conn, caller.until)
    event = caller.event(mesh)
    assert event["kind"] == "http" and event["reporter"] == str(spiffe(name))
    assert event["outcome"] == "failure" and event["error"]["type"] == "peer_certificate_expired"
    assert "the caller's SVID expired at" in event["error"]["message"]
    assert "envoy.response_flags" not in event.get("labels", {})
    if body == "response":
        assert_cut(event, "stream", "peer_certificate_expired", "the caller's SVID")
    else:
        assert event["http"]["path"] == "/upload" and event["http"]["request_bytes"] == 5


class ClientCertHandler(StreamingHandler):
    def do_GET(self) -> None:
        """Answers with the notAfter (Unix seconds) of the client certificate of its
        connection; /ws and /stream as StreamingHandler."""
        if self.path in ("/ws", "/stream"):
            return super().do_GET()
        assert isinstance(self.connection, ssl.SSLSocket)
        der = self.connection.getpeercert(binary_form=True)
        assert der is not None
        not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
        self._reply(200, b"%d" % not_after.timestamp())


class TlsApp:
    """An upstream speaking mTLS itself, with an SVID for `name` the test sets (`present`);
    new connections get the one presented last. OpenSSL checks the client's SVID."""

    def __init__(self, mesh: Mesh, name: str, tmp_path: Path) -> None:
        self._ca = MeshCA.load(mesh.data)
        self._name = name
        self._dir = tmp_path
        self.credentials = self._issue(timedelta(days=1))
        self._context = self.credentials.server_context(require_client_cert=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), ClientCertHandler)
        self._server.daemon_threads = True
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _issue(self, ttl: timedelta) -> Credentials:
        return self_issue(self._ca, spiffe(self._name), datetime.now(UTC), ttl)

    def present(self, ttl: timedelta) -> x509.Certificate:
        self.credentials = self._issue(ttl)
        chain = self._dir / "app-svid.pem"
        chain.write_bytes(self.credentials.cert_pem + self.credentials.key_pem)
        self._context.load_cert_chain(chain)
        return self.credentials.certificate

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def tls_app(mesh: Mesh, tmp_path: Path) -> Iterator[TlsApp]:
    app = TlsApp(mesh, "catalog", tmp_path)
    yield app
    app.close()


def outbound_to(mesh: Mesh, caller: str, app: TlsApp, protocol: str = "http") -> int:
    """`caller`'s sidecar with an outbound listener for catalog at `app`: its port."""
    port = free_port()
    target = {
        "service": "catalog",
        "listen": address(port),
        "upstream": address(app.port),
        "identity": str(spiffe("catalog")),
        "protocol": "tcp" if protocol == "tcp" else "http",
    }
    mesh.sidecar(caller, {"outbound": [target]})
    return port


def test_a_pooled_connection_is_not_reused_after_the_servers_svid_expired(
    mesh: Mesh, tls_app: TlsApp
) -> None:
    """Regression: the second request went on the pooled connection whose server SVID had
    expired (its outbound event named that certificate)."""
    port = outbound_to(mesh, "orders", tls_app)
    short = tls_app.present(timedelta(seconds=2))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert client.get("/1", headers={"x-request-id": "srv-exp-1"}).status_code == 200
        wait_past(short.not_valid_after_utc)
        renewed = tls_app.present(timedelta(days=1))
        assert client.get("/2", headers={"x-request-id": "srv-exp-2"}).status_code == 200
    served = {
        e["http"]["path"]: e["tls"]["peer_cert_sha256"] for e in events_of(mesh, "srv-exp", 2)
    }
    assert served == {
        "/1": short.fingerprint(hashes.SHA256()).hex(),
        "/2": renewed.fingerprint(hashes.SHA256()).hex(),
    }


def test_a_pooled_connection_is_not_reused_after_the_sidecars_own_svid_expired(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The SVID this sidecar presented on a pooled connection expires too (it renewed since,
    for new connections): an inbound sidecar would refuse the next request there, so it is
    not reused. Regression: the second request went with the expired client SVID."""
    for mesh in mesh_context(tmp_path_factory.mktemp("own"), ["--svid-ttl", "4s"]):
        app = TlsApp(mesh, "catalog", tmp_path)  # its own SVID lasts a day
        try:
            port = outbound_to(mesh, "orders", app)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                first = client.get("/1")
                # every SVID issued to orders before this request has expired after 4 s
                wait_past(datetime.now(UTC) + timedelta(seconds=4))
                asked = time.time()
                second = client.get("/2")
        finally:
            app.close()
    assert first.status_code == 200 and second.status_code == 200
    assert int(second.text) >= asked, "the client certificate of the connection had expired"


def relay_events(mesh: Mesh, caller: str, error_type: str) -> list[dict[str, Any]]:
    """The outbound events of `caller`'s sidecar with an error of `error_type`. Not any
    error: in TCP mode the start-up probe of the listener (`meshproc.wait_port` connects
    and closes at once) is relayed too, and on a loaded host its event may carry one."""
    return mesh.wait_events(
        lambda e: (
            e["reporter"] == str(spiffe(caller))
            and e["direction"] == "outbound"
            and e.get("error", {}).get("type") == error_type
        )
    )


def plain_to(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest.mark.parametrize("protocol", ["tcp", "websocket", "stream"])
def test_an_outbound_relay_is_cut_when_the_servers_svid_expires(
    mesh: Mesh, tls_app: TlsApp, protocol: str
) -> None:
    """Regression: TCP mode, a tunnel after 101 and a streaming response went on relaying
    from an upstream whose SVID had expired."""
    name = f"out-{protocol}"
    port = outbound_to(mesh, name, tls_app, protocol)
    short = tls_app.present(timedelta(seconds=3))
    with plain_to(port) as conn:
        if protocol == "stream":
            stream(conn, "response", name)
            cut_off(conn, short.not_valid_after_utc)
        else:
            tunnel(conn, name)
            wait_past(short.not_valid_after_utc)
            assert closed(conn), "relayed on after the upstream's certificate expired"
    [event] = relay_events(mesh, name, "peer_certificate_expired")
    assert_cut(event, protocol, "peer_certificate_expired", "the upstream's SVID expired at")
    assert event["tls"]["peer_cert_sha256"] == short.fingerprint(hashes.SHA256()).hex()


def test_a_relay_is_cut_when_the_sidecars_own_svid_expires(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The client SVID this sidecar presented on a relayed connection expires (it renewed
    since, for new connections): an inbound sidecar would cut the connection, so it does too.
    Regression: TCP mode and a tunnel went on with the expired client SVID."""
    protocols = ("tcp", "websocket", "stream")
    for mesh in mesh_context(tmp_path_factory.mktemp("own-relay"), ["--svid-ttl", "4s"]):
        app = TlsApp(mesh, "catalog", tmp_path)  # its own SVID lasts a day
        try:
            ports = {p: outbound_to(mesh, f"own-{p}", app, p) for p in protocols}
            conns = {p: plain_to(port) for p, port in ports.items()}
            for protocol, conn in conns.items():
                if protocol == "stream":  # a response still streaming
                    stream(conn, "response", "own-stream")
                else:
                    tunnel(conn, f"own-{protocol}")
            # every SVID issued to these sidecars before this has expired after 4 s
            wait_past(datetime.now(UTC) + timedelta(seconds=4))
            cut = {p: closed(conn) for p, conn in conns.items()}
            for conn in conns.values():
                conn.close()
            assert cut == dict.fromkeys(protocols, True)
            for protocol in protocols:
                [event] = relay_events(mesh, f"own-{protocol}", "local_certificate_expired")
                assert_cut(event, protocol, "local_certificate_expired", "own SVID")
        finally:
            app.close()
