"""The sidecar's agent keeps only an SVID that is for its own identity and its own key.

SPIFFE-ID §3.2: "If a public key is included, then the corresponding private key is retained
by the entity to which the SVID has been issued, and is used to prove ownership of the SVID
itself." A renewal is for the identity the agent already holds (it asks with that SVID), so an
answer whose certificate names another SPIFFE ID, or certifies another key than the one the
agent's CSR carried, is refused instead of being saved and handed to the sidecar's TLS.

The server here is real TLS holding the real server SVID (spiffe://TD/auditmesh/server), so
the agent's secure-naming check passes and only the answer is wrong.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from auditmesh.identity.agent import EnrollmentError, IdentityAgent
from auditmesh.identity.ca import MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import make_csr
from auditmesh.identity.workload import key_to_pem, new_private_key, self_issue

TD = "cluster.local"
ORDERS = SpiffeId.kubernetes(TD, "shop", "orders")
MALLORY = SpiffeId.kubernetes(TD, "shop", "mallory")

Answer = Callable[[MeshCA, bytes], dict[str, str]]


def _server(ca: MeshCA, answer: Answer) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
            body = json.dumps(answer(ca, request["csr"].encode())).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    own = self_issue(ca, SpiffeId.audit_server(TD), datetime.now(UTC), timedelta(hours=1))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = own.server_context(require_client_cert=False)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"https://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def ca(tmp_path: Path) -> MeshCA:
    return init_ca(tmp_path / "ca", TD, now=datetime.now(UTC) - timedelta(minutes=1))


@pytest.fixture
def sidecar_dir(ca: MeshCA, tmp_path: Path) -> Iterator[Path]:
    """A sidecar data directory holding a current SVID for ORDERS, as after a join."""
    key = new_private_key()
    cert = ca.issue_svid(make_csr(key), ORDERS, now=datetime.now(UTC))
    identity = tmp_path / "sidecar" / "identity"
    identity.mkdir(parents=True, mode=0o700)
    (identity / "svid-key.pem").write_bytes(key_to_pem(key))
    (identity / "svid.pem").write_bytes(cert)
    yield tmp_path / "sidecar"


def _renew(ca: MeshCA, sidecar_dir: Path, answer: Answer) -> str:
    httpd, url = _server(ca, answer)
    try:
        agent = IdentityAgent(sidecar_dir, url, ca.trust_bundle())

        async def scenario() -> None:
            assert (await agent.start(None)).spiffe_id == ORDERS
            await agent.renew()

        with pytest.raises(EnrollmentError) as refused:
            asyncio.run(scenario())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert agent.credentials is not None and agent.credentials.spiffe_id == ORDERS
    return str(refused.value)


def _body(ca: MeshCA, cert: bytes, said: SpiffeId = ORDERS) -> dict[str, str]:
    return {"spiffe_id": str(said), "certificate": cert.decode(), "bundle": ""}


def test_a_renewal_answered_with_another_identity_is_refused(ca: MeshCA, sidecar_dir: Path) -> None:
    before = (sidecar_dir / "identity" / "svid.pem").read_bytes()
    message = _renew(
        ca,
        sidecar_dir,
        lambda ca, csr: _body(ca, ca.issue_svid(csr, MALLORY, now=datetime.now(UTC))),
    )
    assert str(MALLORY) in message
    assert (sidecar_dir / "identity" / "svid.pem").read_bytes() == before


def test_a_renewal_answered_for_another_key_is_refused(ca: MeshCA, sidecar_dir: Path) -> None:
    before = (sidecar_dir / "identity" / "svid.pem").read_bytes()
    message = _renew(
        ca,
        sidecar_dir,
        lambda ca, csr: _body(
            ca, ca.issue_svid(make_csr(new_private_key()), ORDERS, now=datetime.now(UTC))
        ),
    )
    assert "key" in message
    assert (sidecar_dir / "identity" / "svid.pem").read_bytes() == before
