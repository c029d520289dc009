"""The mesh listener: join tokens for SVIDs, renewal and audit batches over real mTLS."""

from __future__ import annotations

import json
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography import x509
from google.rpc import code_pb2, status_pb2

from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent, encode_ndjson
from auditmesh.identity.ca import MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import make_csr
from auditmesh.identity.tokens import JoinTokens, TokenRecord, token_sha256
from auditmesh.identity.workload import Credentials, key_to_pem, new_private_key
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import generate

pytestmark = pytest.mark.integration
ORDERS = SpiffeId.kubernetes("cluster.local", "shop", "orders")


@dataclass
class Mesh:
    server: ServerProcess
    mesh_url: str
    data: Path

    def token(self, spiffe_id: SpiffeId) -> str:
        return JoinTokens(self.data).mint(spiffe_id, now=datetime.now(UTC))

    def bundle(self) -> bytes:
        return (self.data / "ca" / "ca.pem").read_bytes()

    def anonymous(self) -> httpx.Client:
        context = ssl.create_default_context(cadata=self.bundle().decode())
        context.check_hostname = False
        return httpx.Client(base_url=self.mesh_url, verify=context)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    data = tmp_path_factory.mktemp("mesh") / "data"
    init_ca(data, "cluster.local", now=datetime.now(UTC) - timedelta(minutes=1))
    port = free_port()
    with ServerProcess(data, extra=["--mesh-listen", f"127.0.0.1:{port}"]) as server:
        yield Mesh(server, f"https://127.0.0.1:{port}", data)


def join(mesh: Mesh, spiffe_id: SpiffeId) -> Credentials:
    key = new_private_key()
    with mesh.anonymous() as client:
        response = client.post(
            "/v1/identity/join",
            json={"token": mesh.token(spiffe_id), "csr": make_csr(key).decode()},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    return Credentials(
        spiffe_id, key_to_pem(key), body["certificate"].encode(), body["bundle"].encode()
    )


def reported_by(spiffe_id: SpiffeId, count: int, seed: int) -> list[AuditEvent]:
    return [msgspec.structs.replace(e, reporter=str(spiffe_id)) for e in generate(count, seed)]


def test_join_issues_an_svid_for_the_token_identity(mesh: Mesh) -> None:
    credentials = join(mesh, ORDERS)
    cert = credentials.certificate
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(ORDERS)]


def test_a_token_an_older_auditmesh_minted_for_the_servers_id_gets_no_svid(
    mesh: Mesh,
) -> None:
    # The CA never issues the server's own ID to a workload: its holder could pose as the
    # server to the sidecars and write records that read as the server's.
    now = datetime.now(UTC)
    token = "legacy-token-for-the-server-id"
    tokens = JoinTokens(mesh.data)
    with tokens._locked():
        records = tokens._load()
        server = SpiffeId.audit_server("cluster.local")
        records[token_sha256(token)] = TokenRecord(
            token_sha256(token), server, now, now + timedelta(minutes=5)
        )
        tokens._save(records, now)
    with mesh.anonymous() as client:
        response = client.post(
            "/v1/identity/join",
            json={"token": token, "csr": make_csr(new_private_key()).decode()},
        )
    assert response.status_code == 400, response.text
    assert "reserved for auditmesh's own components" in response.json()["error"]


def test_an_issuance_the_ledger_cannot_record_is_a_503_not_an_svid(mesh: Mesh) -> None:
    """The ledger is locked past its busy timeout (10 s) while a sidecar joins: no SVID
    leaves unrecorded, and the answer says the token is spent (was: a bare 500)."""
    other = sqlite3.connect(mesh.data / "ledger.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with mesh.anonymous() as client:
            response = client.post(
                "/v1/identity/join",
                json={"token": mesh.token(ORDERS), "csr": make_csr(new_private_key()).decode()},
                timeout=30,
            )
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert response.status_code == 503, response.text
    assert "the join token is used up" in response.json()["error"]
    join(mesh, ORDERS)  # the ledger takes records again: a new token joins


def test_join_token_is_one_time(mesh: Mesh) -> None:
    token = mesh.token(ORDERS)
    csr = make_csr(new_private_key()).decode()
    with mesh.anonymous() as client:
        first = client.post("/v1/identity/join", json={"token": token, "csr": csr})
        assert first.status_code == 200
        again = client.post("/v1/identity/join", json={"token": token, "csr": csr})
        unknown = client.post("/v1/identity/join", json={"token": "nope", "csr": csr})
    assert again.status_code == 403 and "used" in again.json()["error"]
    assert unknown.status_code == 403 and "unknown" in unknown.json()["error"]


def test_a_bad_csr_leaves_the_join_token_unused(mesh: Mesh) -> None:
    token = mesh.token(ORDERS)
    good = make_csr(new_private_key()).decode()
    tampered = good.replace(good.splitlines()[3], good.splitlines()[3][::-1])
    with mesh.anonymous() as client:
        for csr in ("not a CSR", tampered):
            refused = client.post("/v1/identity/join", json={"token": token, "csr": csr})
            assert refused.status_code == 400
            assert "the join token is still unused" in refused.json()["error"]
        issued = client.post("/v1/identity/join", json={"token": token, "csr": good})
    assert issued.status_code == 200, issued.text


def test_batches_over_mtls_must_be_reported_by_the_caller(mesh: Mesh) -> None:
    credentials = join(mesh, ORDERS)
    with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:
        own = client.post("/v1/events", content=encode_ndjson(reported_by(ORDERS, 5, 1)))
        assert own.status_code == 200, own.text
        someone_else = reported_by(SpiffeId.kubernetes("cluster.local", "shop", "payments"), 1, 2)
        forged = client.post(
            "/v1/events", content=encode_ndjson([*reported_by(ORDERS, 2, 3), *someone_else])
        )
    assert forged.status_code == 403
    assert forged.json()["line"] == 3 and "nothing stored" in forged.json()["error"]
    with mesh.anonymous() as client:
        anonymous = client.post("/v1/events", content=encode_ndjson(reported_by(ORDERS, 1, 4)))
    assert anonymous.status_code == 401


def test_renewal_over_mtls_keeps_the_identity(mesh: Mesh) -> None:
    credentials = join(mesh, ORDERS)
    key = new_private_key()
    with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:
        response = client.post("/v1/identity/renew", json={"csr": make_csr(key).decode()})
    assert response.status_code == 200, response.text
    assert response.json()["spiffe_id"] == str(ORDERS)
    renewed = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert renewed.serial_number != credentials.certificate.serial_number
    with mesh.anonymous() as client:
        assert client.post("/v1/identity/renew", json={"csr": "x"}).status_code == 401


def test_an_otlp_export_sent_to_the_mesh_listener_is_told_where_otlp_is_served(
    mesh: Mesh,
) -> None:
    """An exporter pointed at the mesh port gets a 404 as a google.rpc.Status in its own
    encoding (OTLP spec, "Failures"), naming the API listener (--listen) and its address;
    was a plain-text "Not Found", which an OTel SDK cannot read."""
    listen = f"127.0.0.1:{mesh.server.port}"
    with mesh.anonymous() as client:
        protobuf = client.post(
            "/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
        )
        as_json = client.post(
            "/v1/logs", content=b"{}", headers={"content-type": "application/json"}
        )
    assert protobuf.status_code == 404, protobuf.text
    assert protobuf.headers["content-type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(protobuf.content)
    assert status.code == code_pb2.UNIMPLEMENTED
    assert f"on the API listener (--listen, here {listen})" in status.message
    assert as_json.status_code == 404, as_json.text
    assert as_json.headers["content-type"] == "application/json"
    assert f"(--listen, here {listen})" in as_json.json()["message"]


def test_rotated_svids_each_authenticate_their_new_connections(mesh: Mesh) -> None:
    """SVID rotation at the mesh listener, whose trust bundle is parsed once for all its
    connections (server/mesh.py peer_protocol): each renewed SVID, presented on a new
    connection, is verified and renewed again, and a batch over the last one is the
    caller's."""
    credentials = join(mesh, ORDERS)
    serials = {credentials.certificate.serial_number}
    for _ in range(3):
        key = new_private_key()
        with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:
            renewed = client.post("/v1/identity/renew", json={"csr": make_csr(key).decode()})
        assert renewed.status_code == 200, renewed.text
        body = renewed.json()
        credentials = Credentials(
            ORDERS, key_to_pem(key), body["certificate"].encode(), body["bundle"].encode()
        )
        serials.add(credentials.certificate.serial_number)
    assert len(serials) == 4
    with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:
        batch = client.post("/v1/events", content=encode_ndjson(reported_by(ORDERS, 2, 5)))
    assert batch.status_code == 200, batch.text


def test_issuance_and_refusals_are_audit_events(mesh: Mesh) -> None:
    join(mesh, ORDERS)
    with mesh.anonymous() as client:
        csr = make_csr(new_private_key()).decode()
        client.post("/v1/identity/join", json={"token": "forged", "csr": csr})
        client.post("/v1/identity/join", json={"token": "forged", "csr": "x"})
        assert client.get("/v1/identity/bundle").content == mesh.bundle()
    ledger = open_ledger(mesh.data, create=False)
    try:
        actions = [
            msgspec.json.decode(data)["labels"].get("identity.action")
            for _, data in ledger.store.entries(0, ledger.store.size())
        ]
    finally:
        ledger.close()
    assert {"svid_issued", "join_token_refused", "join_csr_refused"} <= set(actions)


def test_refused_renewals_are_audit_events(mesh: Mesh) -> None:
    """An SVID that expired (the TLS handshake completes; the server refuses it with the
    reason) and a bad CSR from a valid SVID: both answered and both recorded."""
    key = new_private_key()
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    expired_pem = MeshCA.load(mesh.data).issue_svid(
        make_csr(key), ORDERS, timedelta(minutes=5), now=long_ago
    )
    expired = Credentials(ORDERS, key_to_pem(key), expired_pem, mesh.bundle())
    csr = make_csr(new_private_key()).decode()
    with httpx.Client(base_url=mesh.mesh_url, verify=expired.client_context()) as client:
        refused = client.post("/v1/identity/renew", json={"csr": csr})
    assert refused.status_code == 403 and "expired" in refused.json()["error"]
    with httpx.Client(base_url=mesh.mesh_url, verify=join(mesh, ORDERS).client_context()) as c:
        bad_csr = c.post("/v1/identity/renew", json={"csr": "not a CSR"})
    assert bad_csr.status_code == 400
    ledger = open_ledger(mesh.data, create=False)
    try:
        events = [msgspec.json.decode(d) for _, d in ledger.store.entries(0, ledger.store.size())]
    finally:
        ledger.close()
    by_action = {e["labels"].get("identity.action"): e for e in events}
    certificate = by_action["renew_certificate_refused"]
    assert certificate["kind"] == "authn" and certificate["outcome"] == "failure"
    assert "expired" in certificate["error"]["message"]
    csr_refused = by_action["renew_csr_refused"]
    assert csr_refused["source"]["identity"] == str(ORDERS)


def test_identity_agent_joins_persists_and_renews(mesh: Mesh, tmp_path: Path) -> None:
    import asyncio

    from auditmesh.identity.agent import EnrollmentError, IdentityAgent

    seen: list[Credentials] = []

    async def scenario() -> None:
        agent = IdentityAgent(tmp_path / "sidecar", mesh.mesh_url, mesh.bundle())
        agent.subscribe(seen.append)
        first = await agent.start(mesh.token(ORDERS))
        assert first.spiffe_id == ORDERS
        restarted = IdentityAgent(tmp_path / "sidecar", mesh.mesh_url, mesh.bundle())
        again = await restarted.start(None)  # no token needed: the SVID on disk is valid
        assert again.cert_pem == first.cert_pem
        renewed = await restarted.renew()
        assert renewed.spiffe_id == ORDERS and renewed.cert_pem != first.cert_pem
        fresh = IdentityAgent(tmp_path / "other", mesh.mesh_url, mesh.bundle())
        with pytest.raises(EnrollmentError, match="no join token"):
            await fresh.start(None)

    asyncio.run(scenario())
    key_file = tmp_path / "sidecar" / "identity" / "svid-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(seen) == 1


class _Impostor(BaseHTTPRequestHandler):
    """Answers every POST as the server would, but holds a workload's SVID."""

    received: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.received.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps({"certificate": "", "bundle": "", "spiffe_id": ""}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_workload_posing_as_the_server_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    """Its certificate chains to the mesh CA, but it is not spiffe://TD/auditmesh/server: the
    agent (join, renewal) and the sidecar's emitter (`identity.server_tls`) hang up right
    after the handshake, before the join token or a batch is sent."""
    import asyncio

    from auditmesh.identity.agent import EnrollmentError, IdentityAgent

    impostor = join(mesh, SpiffeId.kubernetes("cluster.local", "shop", "mallory"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    context = impostor.server_context(require_client_cert=False)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        agent = IdentityAgent(tmp_path / "sidecar", url, mesh.bundle())
        with pytest.raises(EnrollmentError) as refused:
            asyncio.run(agent.start("a-token-the-impostor-would-steal"))
    finally:
        httpd.shutdown()
        httpd.server_close()
    message = str(refused.value)
    assert _Impostor.received == []  # the token never left
    assert "not the audit server (spiffe://cluster.local/auditmesh/server)" in message
    assert "spiffe://cluster.local/ns/shop/sa/mallory" in message
    assert not (tmp_path / "sidecar" / "identity" / "svid.pem").exists()


def test_a_stop_does_not_wait_for_idle_mesh_clients(tmp_path: Path) -> None:
    # A sidecar's emitter keeps its TLS connection in a pool and does not read it, so the
    # server's close_notify goes unanswered: the stop used to wait out a 30 s TLS timeout.
    data = tmp_path / "data"
    init_ca(data, "cluster.local", now=datetime.now(UTC) - timedelta(minutes=1))
    port = free_port()
    server = ServerProcess(data, extra=["--mesh-listen", f"127.0.0.1:{port}"]).start()
    mesh = Mesh(server, f"https://127.0.0.1:{port}", data)
    with mesh.anonymous() as idle:
        assert idle.get("/v1/identity/bundle").status_code == 200  # pooled, kept open
        assert server.stop(timeout_s=15) == 0
    assert "last checkpoint signed" in server.log_path.read_text()
