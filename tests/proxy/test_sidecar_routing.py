"""A shared outbound listener over real sockets and mTLS: each request goes to the service
its Host header names; a host the listener does not serve is a 404 with Envoy's NR flag."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.mesh_fixture import Mesh, mesh_context, spiffe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("routing"))


@pytest.fixture(scope="module")
def shared(mesh: Mesh) -> int:
    """payments and catalog behind their inbound sidecars; orders reaches both through one
    outbound port, which it returns."""
    listen = free_port()
    targets = []
    for service in ("payments", "catalog"):
        inbound = free_port()
        app = address(mesh.start_app(service))
        mesh.sidecar(service, {"inbound": {"listen": address(inbound), "app": app}})
        targets.append(
            {
                "service": service,
                "listen": address(listen),
                "upstream": address(inbound),
                "identity": str(spiffe(service)),
            }
        )
    mesh.sidecar("orders", {"outbound": targets})
    return listen


def outbound_events(mesh: Mesh, request_id: str) -> list[dict[str, Any]]:
    return mesh.wait_events(
        lambda e: (
            e.get("direction") == "outbound" and e.get("http", {}).get("request_id") == request_id
        )
    )


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("payments", "payments"),
        ("catalog.shop", "catalog"),
        ("catalog.shop.svc.cluster.local:8080", "catalog"),
        ("PAYMENTS.Shop.svc", "payments"),
    ],
)
def test_each_request_goes_to_the_service_its_host_names(
    mesh: Mesh, shared: int, host: str, service: str
) -> None:
    request_id = f"route-{host}"
    response = httpx.get(
        f"http://127.0.0.1:{shared}/hello", headers={"host": host, "x-request-id": request_id}
    )
    assert response.status_code == 200
    assert response.text == f"hello from {service}"
    [event] = outbound_events(mesh, request_id)
    assert event["destination"]["service"] == service
    assert event["destination"]["identity"] == str(spiffe(service))
    assert event["outcome"] == "success"


def test_one_kept_alive_connection_may_call_several_services(mesh: Mesh, shared: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{shared}") as client:
        answers = [
            client.get("/hello", headers={"host": host}).text
            for host in ("payments", "catalog", "payments")
        ]
    assert answers == ["hello from payments", "hello from catalog", "hello from payments"]


def test_a_host_the_listener_does_not_serve_is_no_route(mesh: Mesh, shared: int) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{shared}/hello",
        headers={"host": "ledger.shop:80", "x-request-id": "route-none"},
    )
    assert response.status_code == 404
    assert "no route" in response.text and "ledger.shop:80" in response.text
    [event] = outbound_events(mesh, "route-none")
    assert event["outcome"] == "failure"
    assert event["error"]["type"] == "no_route"
    assert event["labels"]["envoy.response_flags"] == "NR"
    assert event["http"]["status"] == 404
    assert event["destination"] == {"host": "ledger.shop:80"}
    assert event["source"]["identity"] == str(spiffe("orders"))


def test_a_request_without_host_is_no_route(mesh: Mesh, shared: int) -> None:
    # HTTP/1.0 allows a request without Host; on a shared port it names no service.
    with socket.create_connection(("127.0.0.1", shared), timeout=5) as conn:
        conn.sendall(b"GET /hello HTTP/1.0\r\nx-request-id: route-nohost\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 ")
    [event] = outbound_events(mesh, "route-nohost")
    assert event["error"]["type"] == "no_route"
    assert "host" not in event["destination"]


def test_an_absolute_form_request_goes_to_the_service_its_target_names(
    mesh: Mesh, shared: int
) -> None:
    # An app with HTTP_PROXY pointing at the sidecar sends `GET http://catalog/hello`; the
    # target's authority decides, not a Host header that says otherwise (RFC 9112 §3.2.2).
    with socket.create_connection(("127.0.0.1", shared), timeout=5) as conn:
        conn.sendall(
            b"GET http://catalog.shop/hello HTTP/1.1\r\nhost: payments\r\n"
            b"x-request-id: route-absolute\r\nconnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello from catalog")
    [event] = outbound_events(mesh, "route-absolute")
    assert event["destination"]["service"] == "catalog"
    # handled in origin form: what policies match and the event records is the path alone
    assert event["http"]["path"] == "/hello"


def test_a_no_route_call_with_a_huge_host_is_still_audited(mesh: Mesh, shared: int) -> None:
    host = "x" * 8000
    response = httpx.get(
        f"http://127.0.0.1:{shared}/hello", headers={"host": host, "x-request-id": "route-huge"}
    )
    assert response.status_code == 404
    [event] = outbound_events(mesh, "route-huge")
    assert event["labels"]["envoy.response_flags"] == "NR"
    assert event["destination"] == {"host": "x" * 253}
    assert event["labels"]["auditmesh.clipped"] == "destination.host,error.message"


def test_a_huge_user_agent_is_clipped_not_left_unaudited(mesh: Mesh, shared: int) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{shared}/hello",
        headers={"host": "payments", "user-agent": "u" * 10_000, "x-request-id": "route-ua"},
    )
    assert response.status_code == 200
    [event] = outbound_events(mesh, "route-ua")
    assert event["http"]["user_agent"] == "u" * 4096
    assert event["labels"]["auditmesh.clipped"] == "http.user_agent"
