"""Access control of the read API against a real server: every answer that reveals recorded
data to a reader leaves an `audit_read` record, the ambiguous-prefix answers of
GET /v1/traces/{id} too."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from auditmesh.events import AuditEvent, Trace, encode_ndjson
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate

pytestmark = pytest.mark.integration
PREFIX = "abcdef01"
# two traces sharing their first 8 hex digits: a prefix that names neither alone
TRACES = (PREFIX + "1" * 24, PREFIX + "2" * 24)


@dataclass
class Served:
    server: ServerProcess
    token: str

    def get(self, path: str, **params: str | int) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.get(self.server.url + path, params=params, headers=headers, timeout=30)

    def audit_reads(self) -> list[dict[str, object]]:
        page = self.get("/v1/events", kind="audit_read", order="index", limit=1000)
        assert page.status_code == 200, page.text
        return [item["event"] for item in page.json()["events"]]


def _traced(events: list[AuditEvent]) -> list[AuditEvent]:
    return [
        msgspec.structs.replace(e, trace=Trace(trace_id=TRACES[n % 2]))
        for n, e in enumerate(events)
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data: Path = tmp_path_factory.mktemp("readaccess") / "data"
    flags = ["--mesh-listen", "off", "--otlp-grpc", "off", "--checkpoint-interval", "0.2"]
    with ServerProcess(data, extra=flags) as server:
        events = _traced(generate(6, seed=5))
        answer = httpx.post(server.url + "/v1/events", content=encode_ndjson(events), timeout=30)
        assert answer.status_code == 200, answer.text
        token = (data / "keys" / "api.token").read_text().strip()
        yield Served(server, token)


def test_an_ambiguous_trace_prefix_that_names_stored_trace_ids_is_audited(
    served: Served,
) -> None:
    before = len(served.audit_reads())  # this listing is itself one read
    answer = served.get(f"/v1/traces/{PREFIX}")
    reads = served.audit_reads()
    recorded = reads[before + 1 :]  # after the first listing's own record
    assert answer.status_code == 400
    assert all(t in answer.text for t in TRACES)  # it names stored trace ids: a read
    paths = [r["http"]["path"] for r in recorded]  # type: ignore[index]
    assert paths == [f"/v1/traces/{PREFIX}"]
    assert recorded[0]["http"]["status"] == 400  # type: ignore[index]
    assert recorded[0]["labels"]["read.count"] == "0"  # type: ignore[index]


def test_a_prefix_probe_for_trace_ids_is_audited(served: Served) -> None:
    """`no trace id stored begins with X` versus another answer tells which prefixes exist:
    enumerating stored trace ids digit by digit must leave records too."""
    before = len(served.audit_reads())
    missing = served.get("/v1/traces/ffffffff")
    assert missing.status_code == 404
    reads = served.audit_reads()
    paths = [r["http"]["path"] for r in reads[before + 1 :]]  # type: ignore[index]
    assert paths == ["/v1/traces/ffffffff"]


@pytest.mark.parametrize("route", ["/v1/events/{id}", "/v1/proof/inclusion?id={id}"])
def test_an_event_id_probe_is_audited(served: Served, route: str) -> None:
    """A 404 for an event id tells that no such event is stored, where another answer would
    tell it is: probing ids must leave records too."""
    absent = "0190f000-0000-7000-8000-000000000000"
    before = len(served.audit_reads())
    path = route.format(id=absent)
    missing = httpx.get(
        served.server.url + path, headers={"authorization": f"Bearer {served.token}"}, timeout=30
    )
    assert missing.status_code == 404, missing.text
    recorded = served.audit_reads()[before + 1 :]
    assert [(r["http"]["path"], r["http"]["status"]) for r in recorded] == [(path, 404)]  # type: ignore[index]
