"""A sidecar told to stop (SIGTERM) lets calls in progress finish, up to its drain time, and
audits every call it cuts short: no call goes unrecorded because the proxy went away."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.mesh_fixture import Mesh, mesh_context, open_websocket, spiffe

pytestmark = pytest.mark.integration


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path)


def test_stopping_lets_a_call_finish_and_audits_an_open_connection(mesh: Mesh) -> None:
    pay_in, orders_out, db_in, db_out = (free_port() for _ in range(4))
    mesh.start_app("payments")
    mesh.sidecar(
        "payments",
        {"inbound": {"listen": address(pay_in), "app": address(mesh.apps["payments"])}},
    )
    mesh.echo_sidecar("ledgerdb", db_in)
    orders = mesh.sidecar(
        "orders",
        {
            "outbound": [
                {"service": "payments", "listen": address(orders_out),
                 "upstream": address(pay_in), "identity": str(spiffe("payments"))},
                {"service": "ledgerdb", "listen": address(db_out), "upstream": address(db_in),
                 "identity": str(spiffe("ledgerdb")), "protocol": "tcp"},
            ]
        },
    )  # fmt: skip
    answers: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: answers.append(
            httpx.get(
                f"http://127.0.0.1:{orders_out}/slow",
                headers={"host": "payments", "x-request-id": "in-flight"},
                timeout=15,
            )
        )
    )
    slow.start()
    db = socket.create_connection(("127.0.0.1", db_out), timeout=10)
    db.sendall(b"open")
    assert db.recv(10) == b"open"
    ws, head = open_websocket(orders_out, "ws-open")
    ws.sendall(b"ping")
    echoed = head.split(b"\r\n\r\n", 1)[1]
    while b"echo:ping" not in echoed:
        echoed += ws.recv(1000)
    time.sleep(0.5)  # the slow call has reached the app (it answers after 3 s)
    orders.send_signal(signal.SIGTERM)
    slow.join(15)
    assert answers and answers[0].status_code == 200 and answers[0].text == "slow"
    assert orders.wait(15) == 0
    db.close()
    ws.close()
    [call] = mesh.wait_events(
        lambda e: (
            e.get("http", {}).get("request_id") == "in-flight" and e["direction"] == "outbound"
        )
    )
    assert call["outcome"] == "success" and call["http"]["status"] == 200
    cuts = mesh.wait_events(
        lambda e: (
            e["kind"] == "tcp"
            and e["direction"] == "outbound"
            and e["reporter"] == str(spiffe("orders"))
            and e["tcp"].get("end") == "sidecar_stopped"
        )
    )
    [cut] = cuts
    assert (cut["tcp"]["sent_bytes"], cut["tcp"]["received_bytes"]) == (4, 4)
    assert cut["labels"]["envoy.response_flags"] == "DC"
    [tunnel] = mesh.wait_events(
        lambda e: e.get("http", {}).get("request_id") == "ws-open" and e["direction"] == "outbound"
    )
    assert tunnel["labels"]["upgrade"] == "websocket"
    assert tunnel["labels"]["envoy.response_flags"] == "DC"
    assert tunnel["http"]["request_bytes"] >= 4  # the ping relayed before the stop
