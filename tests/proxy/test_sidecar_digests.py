"""Body digests over real sockets and mTLS (`audit.body_digests`, DESIGN.md "Audit depth"):
the sidecar that keeps them records each body's SHA-256 as relayed, never the data; one
that does not (the default) records neither."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.mesh_fixture import Mesh, events_of, mesh_context, spiffe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("digests"))


@pytest.fixture(scope="module")
def outbound(mesh: Mesh) -> int:
    """payments (default audit) called by orders, whose sidecar keeps body digests."""
    inbound, listen = free_port(), free_port()
    app = address(mesh.start_app("payments"))
    mesh.sidecar("payments", {"inbound": {"listen": address(inbound), "app": app}})
    target = {
        "service": "payments",
        "listen": address(listen),
        "upstream": address(inbound),
        "identity": str(spiffe("payments")),
    }
    mesh.sidecar("orders", {"outbound": [target], "audit": {"flush_ms": 50, "body_digests": True}})
    return listen


def both_sides(mesh: Mesh, request_id: str) -> dict[str, dict[str, Any]]:
    return {e["direction"]: e["http"] for e in events_of(mesh, request_id, 2)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_streamed_bodies_are_digested_not_kept(mesh: Mesh, outbound: int) -> None:
    chunks = [b"card=4111-1111-1111-1111;", b"amount=42;" * 5000]  # sent chunked, streamed
    response = httpx.post(
        f"http://127.0.0.1:{outbound}/charge",
        content=iter(chunks),
        headers={"x-request-id": "digest-post"},
    )
    assert response.status_code == 200 and response.content == b"".join(chunks)
    sides = both_sides(mesh, "digest-post")
    body = b"".join(chunks)
    assert sides["outbound"]["request_body_sha256"] == sha256(body)
    assert sides["outbound"]["response_body_sha256"] == sha256(body)  # the app echoes it
    assert sides["outbound"]["request_bytes"] == len(body)
    assert "request_body_sha256" not in sides["inbound"]  # payments keeps the default
    # the data itself is nowhere (the whole card number: "4111" alone turns up by chance in
    # the events' random hex ids about once in seventy runs)
    assert b"4111-1111-1111-1111" not in str(mesh.events()).encode()


def test_a_request_without_a_body_has_no_request_digest(mesh: Mesh, outbound: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{outbound}/hi", headers={"x-request-id": "digest-get"})
    assert response.status_code == 200
    outbound_http = both_sides(mesh, "digest-get")["outbound"]
    assert "request_body_sha256" not in outbound_http
    assert outbound_http["response_body_sha256"] == sha256(response.content)
