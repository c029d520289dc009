"""`attested` is the server's word that our own sidecar observed a call: only a sidecar,
over the mesh listener's mTLS, may submit attested events; the plain listener refuses them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec
import pytest

from auditmesh.events import AuditEvent, encode_ndjson
from tests.conftest import generate
from tests.server.meshserver import mesh_server
from tests.server.test_api import auth
from tests.server.test_mesh import ORDERS, Mesh, join, reported_by

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with mesh_server(tmp_path_factory.mktemp("attested") / "data") as running:
        yield running


def attested(events: list[AuditEvent]) -> list[AuditEvent]:
    return [msgspec.structs.replace(e, attested=True) for e in events]


def test_plain_listener_refuses_a_forged_attested_event(mesh: Mesh) -> None:
    events = generate(3, seed=41)
    forged = [*events[:2], *attested(events[2:])]
    answer = httpx.post(mesh.server.url + "/v1/events", content=encode_ndjson(forged))
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["line"] == 3
    assert "nothing stored" in body["error"] and "event 3 is attested" in body["error"]
    assert "only a sidecar over the mesh listener" in body["error"]
    assert '"attested": false' in body["error"]
    for event in events:  # not even the two reported events went in
        lookup = httpx.get(f"{mesh.server.url}/v1/events/{event.id}", headers=auth(mesh.server))
        assert lookup.status_code == 404
    reported = httpx.post(mesh.server.url + "/v1/events", content=encode_ndjson(events))
    assert reported.status_code == 200, reported.text


def test_mesh_listener_keeps_taking_the_sidecars_attested_events(mesh: Mesh) -> None:
    credentials = join(mesh, ORDERS)
    events = attested(reported_by(ORDERS, 4, 42))
    with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:
        answer = client.post("/v1/events", content=encode_ndjson(events))
    assert answer.status_code == 200, answer.text
    stored = httpx.get(f"{mesh.server.url}/v1/events/{events[0].id}", headers=auth(mesh.server))
    assert stored.status_code == 200 and stored.json()["event"]["attested"] is True
