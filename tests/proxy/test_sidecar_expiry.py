"""An SVID is checked at each request on a kept-alive connection, not only at its handshake:
X509-SVID §5.1 asks for RFC 5280 path validation, whose §6.1.3 (a)(2) wants the validity
period (the SVID's, and the CA's that signed it) to include the current time. Inbound, a
request on a connection whose caller's SVID or CA has expired since is refused like such a
handshake (an `authn` failure) and the connection closed; outbound, a pooled connection is
not reused once the server's SVID, or the sidecar's own, has expired: it dials again."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

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
from tests.proxy.mesh_fixture import TD, AppHandler, Mesh, events_of, mesh_context, spiffe
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


def closed(conn: ssl.SSLSocket) -> bool:
    try:
        return conn.recv(4096) == b""
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.parametrize("expiring", ["svid", "ca"])
def test_a_request_after_the_callers_svid_or_ca_expired_is_refused(
    mesh: Mesh, tmp_path: Path, expiring: str
) -> None:
    """Regression: the second request, sent on the connection after the caller's SVID (or
    the second CA of the bundle that signed it) expired, reached the app."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_until = datetime.now(UTC) + timedelta(seconds=8)  # the sidecar starts meanwhile
    other_ca = build_root(TD, ca_key, now=ca_until - CA_VALIDITY)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(mesh.local.bundle_path.read_bytes() + other_ca.public_bytes(PEM))
    name, port = f"pay-{expiring}", free_port()
    token = JoinTokens(mesh.data).mint(spiffe(name), now=datetime.now(UTC))
    app = address(mesh.start_app(name))
    mesh.sidecar(
        name,
        {
            "inbound": {"listen": address(port), "app": app, "mtls": "STRICT"},
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
    with tls_to(mesh, port, (cert, key_file)) as conn:
        conn.sendall(request("/before", f"{name}-before"))
        assert read_response(conn).startswith(b"HTTP/1.1 200 ")
        wait_past(until)
        conn.sendall(request("/after", f"{name}-after"))
        assert closed(conn), "answered on a connection whose caller's certificate expired"
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    [event] = mesh.wait_events(
        lambda e: e["kind"] == "authn" and e.get("tls", {}).get("peer_cert_sha256") == fingerprint
    )
    assert event["outcome"] == "failure" and event["reporter"] == str(spiffe(name))
    reason, words = {
        "svid": ("expired", "expired at"),
        "ca": ("untrusted", "not valid at validation time"),
    }[expiring]
    assert event["error"]["type"] == reason and words in event["error"]["message"]
    assert event["tls"]["peer_not_after"] == int(leaf.not_valid_after_utc.timestamp())
    assert [e["http"]["path"] for e in events_of(mesh, name, 1)] == ["/before"]


class ClientCertHandler(AppHandler):
    def do_GET(self) -> None:
        """Answers with the notAfter (Unix seconds) of the client certificate of its
        connection."""
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


def outbound_to(mesh: Mesh, caller: str, app: TlsApp) -> int:
    """`caller`'s sidecar with an outbound listener for catalog at `app`: its port."""
    port = free_port()
    target = {
        "service": "catalog",
        "listen": address(port),
        "upstream": address(app.port),
        "identity": str(spiffe("catalog")),
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
