"""Real mTLS over loopback with SVIDs from the real mesh CA and Python's ``ssl`` (OpenSSL).

The server requires a client certificate chaining to the mesh CA, reads the peer certificate
and names the client with ``verify_peer_svid``; the client checks the server's ID (secure
naming). A client whose certificate comes from another CA fails the handshake.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from auditmesh.identity.ca import MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId, parse
from auditmesh.identity.svid import PeerIdentityError, make_csr, verify_peer_svid

pytestmark = pytest.mark.integration

TD = "mesh.test"
SERVER_ID = parse(f"spiffe://{TD}/ns/shop/sa/checkout")
CLIENT_ID = parse(f"spiffe://{TD}/ns/shop/sa/frontend")
WorkloadKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Workload:
    cert: Path
    key: Path


def enroll(ca: MeshCA, spiffe_id: SpiffeId, key: WorkloadKey, where: Path) -> Workload:
    """What a sidecar does: keep the key, send a CSR, store the SVID the CA returns."""
    cert_pem = ca.issue_svid(make_csr(key), spiffe_id, now=datetime.now(UTC))
    where.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = where / "svid.pem", where / "svid-key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Workload(cert_path, key_path)


def context(purpose: ssl.Purpose, me: Workload, bundle: bytes) -> ssl.SSLContext:
    side = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SVIDs carry no DNS names; identity is checked by SPIFFE ID
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=bundle.decode())
    ctx.load_cert_chain(me.cert, me.key)
    return ctx


@dataclass
class ServerResult:
    peer_id: SpiffeId | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def serve_once(listener: socket.socket, ctx: ssl.SSLContext, bundle: bytes) -> ServerResult:
    result = ServerResult()

    def run() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    result.peer_id = verify_peer_svid(der, bundle, datetime.now(UTC))
                    tls.sendall(f"hello {result.peer_id}".encode())
        except BaseException as exc:  # recorded for the test thread to inspect
            result.error = exc
        finally:
            result.done.set()

    threading.Thread(target=run, daemon=True).start()
    return result


@pytest.fixture
def mesh(tmp_path: Path) -> MeshCA:
    return init_ca(tmp_path / "mesh", TD, now=datetime.now(UTC))


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("client_key", ["p256", "ed25519"])
def test_mutual_tls_names_both_sides(
    mesh: MeshCA, listener: socket.socket, tmp_path: Path, client_key: str
) -> None:
    bundle = mesh.trust_bundle()
    key: WorkloadKey = (
        ec.generate_private_key(ec.SECP256R1())
        if client_key == "p256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    server = enroll(mesh, SERVER_ID, ec.generate_private_key(ec.SECP256R1()), tmp_path / "s")
    client = enroll(mesh, CLIENT_ID, key, tmp_path / "c")
    result = serve_once(listener, context(ssl.Purpose.CLIENT_AUTH, server, bundle), bundle)
    with listener, socket.create_connection(listener.getsockname(), timeout=10) as raw:
        ctx = context(ssl.Purpose.SERVER_AUTH, client, bundle)
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            # Secure naming: the client insists on the identity configured for this upstream.
            assert verify_peer_svid(der, bundle, datetime.now(UTC), SERVER_ID) == SERVER_ID
            with pytest.raises(PeerIdentityError, match="was expected"):
                verify_peer_svid(der, bundle, datetime.now(UTC), CLIENT_ID)
            assert tls.recv(200) == f"hello {CLIENT_ID}".encode()
    assert result.done.wait(10)
    assert result.error is None
    assert result.peer_id == CLIENT_ID


def test_client_with_an_untrusted_certificate_fails_the_handshake(
    mesh: MeshCA, listener: socket.socket, tmp_path: Path
) -> None:
    bundle = mesh.trust_bundle()
    rogue_ca = init_ca(tmp_path / "rogue", TD, now=datetime.now(UTC))
    server = enroll(mesh, SERVER_ID, ec.generate_private_key(ec.SECP256R1()), tmp_path / "s")
    # Same SPIFFE ID, same trust domain name, but issued by a CA the server does not trust.
    rogue = enroll(rogue_ca, CLIENT_ID, ec.generate_private_key(ec.SECP256R1()), tmp_path / "r")
    result = serve_once(listener, context(ssl.Purpose.CLIENT_AUTH, server, bundle), bundle)
    received = b""
    with listener, socket.create_connection(listener.getsockname(), timeout=10) as raw:
        ctx = context(ssl.Purpose.SERVER_AUTH, rogue, bundle)
        try:
            with ctx.wrap_socket(raw) as tls:
                # TLS 1.3: the client finishes first; the server's alert arrives on read.
                received = tls.recv(200)
        except (ssl.SSLError, ConnectionError):
            pass
    assert received == b""
    assert result.done.wait(10)
    assert isinstance(result.error, ssl.SSLError)
    assert "certificate" in str(result.error).lower()
    assert result.peer_id is None


def test_server_with_an_untrusted_certificate_is_refused_by_the_client(
    mesh: MeshCA, listener: socket.socket, tmp_path: Path
) -> None:
    bundle = mesh.trust_bundle()
    rogue_ca = init_ca(tmp_path / "rogue", TD, now=datetime.now(UTC))
    rogue_server = enroll(
        rogue_ca, SERVER_ID, ec.generate_private_key(ec.SECP256R1()), tmp_path / "s"
    )
    client = enroll(mesh, CLIENT_ID, ec.generate_private_key(ec.SECP256R1()), tmp_path / "c")
    rogue_bundle = rogue_ca.trust_bundle()
    result = serve_once(
        listener, context(ssl.Purpose.CLIENT_AUTH, rogue_server, rogue_bundle), rogue_bundle
    )
    with listener, socket.create_connection(listener.getsockname(), timeout=10) as raw:
        ctx = context(ssl.Purpose.SERVER_AUTH, client, bundle)
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw)
    assert result.done.wait(10)
    assert result.peer_id is None
