"""The sidecar keeps auditing through trouble: the server away (spool and replay, exactly
once) and SVID rotation under load (no failed request, renewals audited)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.mesh_fixture import Mesh, mesh_context, spiffe

pytestmark = pytest.mark.integration


def pair(tmp_path_factory: pytest.TempPathFactory, *server_args: str) -> Iterator[tuple[Mesh, int]]:
    """orders → payments through two sidecars."""
    for mesh in mesh_context(tmp_path_factory.mktemp("resilience"), server_args):
        pay_in, orders_out = free_port(), free_port()
        mesh.start_app("payments")
        mesh.sidecar(
            "payments",
            {"inbound": {"listen": address(pay_in), "app": address(mesh.apps["payments"])}},
        )
        mesh.sidecar(
            "orders",
            {
                "outbound": [
                    {
                        "service": "payments",
                        "listen": address(orders_out),
                        "upstream": address(pay_in),
                        "identity": str(spiffe("payments")),
                    }
                ]
            },
        )
        yield mesh, orders_out


@pytest.fixture
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, int]]:
    yield from pair(tmp_path_factory)


@pytest.fixture
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, int]]:
    """SVIDs of 6 s: the sidecars renew about every 3 s."""
    yield from pair(tmp_path_factory, "--svid-ttl", "6s")


def request_ids(mesh: Mesh, prefix: str) -> Counter[tuple[str, str]]:
    return Counter(
        (e["http"]["request_id"], e["direction"])
        for e in mesh.events()
        if e.get("http", {}).get("request_id", "").startswith(prefix)
    )


def test_server_down_then_up_every_event_lands_once(mesh: tuple[Mesh, int]) -> None:
    cluster, port = mesh
    cluster.server.stop()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for n in range(25):
            response = client.get(f"/pay/{n}", headers={"x-request-id": f"spool-{n}"})
            assert response.status_code == 200  # the data plane does not need the server
    time.sleep(1.0)  # let the emitters fail, back off and spool
    cluster.restart_server()
    deadline = time.monotonic() + 30
    seen: Counter[tuple[str, str]] = Counter()
    while time.monotonic() < deadline:
        seen = request_ids(cluster, "spool-")
        if len(seen) == 50:
            break
        time.sleep(0.3)
    assert len(seen) == 50, f"{50 - len(seen)} events missing"
    assert set(seen.values()) == {1}, "an event was logged twice"


def test_rotation_under_load_fails_no_request(short_lived: tuple[Mesh, int]) -> None:
    cluster, port = short_lived
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not done.is_set():
                try:
                    response = client.get("/under-load", headers={"x-request-id": "rot"})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                    count[0] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 25
    renewed: set[str] = set()
    while time.monotonic() < deadline and len(renewed) < 2:
        renewed = {
            e["source"]["identity"]
            for e in cluster.events()
            if e.get("labels", {}).get("identity.action") == "svid_renewed"
        }
        time.sleep(0.5)
    time.sleep(1.0)  # and some traffic on the new certificates
    done.set()
    for worker in workers:
        worker.join()
    assert renewed >= {str(spiffe("orders")), str(spiffe("payments"))}
    assert count[0] > 30  # traffic kept flowing across the renewals
    assert failures == []
