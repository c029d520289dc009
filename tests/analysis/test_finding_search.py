"""Each finding's event-search filters (`Finding.search`, what the console's "Search these
events" link asks `GET /v1/events` for) select the events the finding is about.

Regression: the console guessed the filters from the finding's kind (`dest=RESPONSIBLE
direction=inbound`, `status=5xx` for an error burst), so a burst of failed TCP connections
linked to no event (no HTTP status), a latency regression blamed on a flooding caller linked
to the calls *to the flooder*, and a service answering under two SPIFFE IDs linked to half of
its failures."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from auditmesh.analysis.findings import Finding, detect
from auditmesh.analysis.query import Query, run
from auditmesh.datadir import open_ledger
from auditmesh.events import TCP, AuditEvent, Error, Peer, decode_event, new_event_id
from tests.analysis.test_findings import T0, TD, S, authn_failure, call, steady
from tests.conftest import fill


def tcp(t: float, src: str, dst: str, *, failed: bool, rng: random.Random) -> AuditEvent:
    time_ns = T0 + int(t * S)
    return AuditEvent(
        id=new_event_id(lambda: time_ns, rng.randbytes),
        time_ns=time_ns,
        duration_us=3000,
        reporter=TD + dst,
        kind="tcp",
        direction="inbound",
        source=Peer(identity=TD + src, service=src, namespace="shop", ip="10.0.0.2"),
        destination=Peer(identity=TD + dst, service=dst, namespace="shop"),
        tcp=TCP(sent_bytes=10, received_bytes=0 if failed else 100),
        outcome="failure" if failed else "success",
        error=Error(type="upstream_reset") if failed else None,
    )


def troubles() -> list[AuditEvent]:
    """Steady traffic and one of each kind of finding, some in the shapes the old links missed."""
    rng = random.Random(7)
    events = steady()
    # batch-report floods orders (a new edge), which slows down for everyone: the latency
    # regression at orders names batch-report as responsible
    events += [
        call(60 + i * 0.025, "batch-report", "orders", duration_ms=400, rng=rng) for i in range(800)
    ]
    events += [
        call(60 + i * 0.25, "frontend", "orders", duration_ms=400, rng=rng) for i in range(80)
    ]
    # the TCP connections to db start failing: failures without an HTTP status
    events += [tcp(t * 0.5, "orders", "db", failed=t >= 120, rng=rng) for t in range(200)]
    # catalog, served under two identities (a canary), fails
    for i in range(40):
        event = call(60 + i * 0.05, "frontend", "catalog", status=503, rng=rng)
        if i % 2 and event.destination is not None:
            canary = msgspec.structs.replace(event.destination, identity=TD + "catalog-canary")
            event = msgspec.structs.replace(event, destination=canary)
        events.append(event)
    # payments in a second namespace: names are qualified, and bank's fail
    for i in range(100):
        event = call(i + 0.5, "ledger", "payments", status=500 if i >= 60 else 200, rng=rng)
        assert event.destination is not None
        bank = msgspec.structs.replace(event.destination, identity=None, namespace="bank")
        events.append(msgspec.structs.replace(event, destination=bank))
    events += [call(70 + i, "batch-report", "payments", denied=True, rng=rng) for i in range(5)]
    events += [call(80 + i, "intruder", "payments", mtls=False, rng=rng) for i in range(3)]
    events += [authn_failure(85 + i, "10.9.9.9", "bad_certificate", rng=rng) for i in range(3)]
    return sorted(events, key=lambda e: e.time_ns)


def build(path: Path) -> list[Finding]:
    """A ledger of `troubles()` at `path`, and the findings over it."""
    ledger = open_ledger(path, origin="test.auditmesh/log")
    try:
        fill(ledger, troubles())
        size = ledger.store.size()
        events = [(i, decode_event(raw)) for i, raw in ledger.store.entries(0, size)]
    finally:
        ledger.close()
    return detect(events)


@pytest.fixture(scope="module")
def ledger_and_findings(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[Finding]]:
    path = tmp_path_factory.mktemp("search") / "data"
    return path, build(path)


def selected(path: Path, finding: Finding, params: dict[str, str]) -> set[int]:
    """Ledger indices the event search selects with these filters over the finding's window
    (as the console's link gives it: since the start, until just after the end)."""
    renamed = {"trace": "trace_id"}
    filters = {renamed.get(k, k): v for k, v in params.items()}
    query = Query(
        **filters,
        since_ns=finding.start_ns,
        until_ns=finding.end_ns + 1,
        order="index",
        limit=10_000,
    )
    ledger = open_ledger(path, create=False)
    try:
        page = run(ledger.store, query)
    finally:
        ledger.close()
    assert page.next is None
    return {index for index, _ in page.rows}


def test_every_kind_of_finding_is_raised(ledger_and_findings: tuple[Path, list[Finding]]) -> None:
    _, findings = ledger_and_findings
    kinds = {f.kind for f in findings}
    assert kinds >= {
        "error_burst",
        "latency_regression",
        "new_edge",
        "repeated_denials",
        "plaintext_calls",
        "failed_authentication",
    }, kinds
    slow = next(f for f in findings if f.kind == "latency_regression")
    assert slow.responsible == TD + "batch-report" and slow.destination == "orders"
    bursts = {f.destination for f in findings if f.kind == "error_burst"}
    assert bursts == {"catalog", "db", "payments.bank"}


def test_the_search_of_each_finding_selects_its_events(
    ledger_and_findings: tuple[Path, list[Finding]],
) -> None:
    path, findings = ledger_and_findings
    for finding in findings:
        assert finding.count <= len(finding.evidence)  # every event of it is known here
        found = selected(path, finding, dict(finding.search))
        # all of its events, and (here, where no filter lacks) no other
        assert found == set(finding.evidence), (finding.kind, finding.destination, finding.search)
        assert finding.to_json()["search"] == dict(finding.search)


def test_the_search_names_parties_as_the_graph_and_query_do(
    ledger_and_findings: tuple[Path, list[Finding]],
) -> None:
    _, findings = ledger_and_findings
    searches = {(f.kind, f.destination): dict(f.search) for f in findings}
    db = searches[("error_burst", "db")]
    assert db["kind"] == "tcp" and "status" not in db and db["direction"] == "inbound"
    catalog = searches[("error_burst", "catalog")]
    assert catalog["dest"] == "catalog.shop" and catalog["status"] == "5xx"  # two identities
    assert searches[("error_burst", "payments.bank")]["dest"] == "payments.bank"
    assert searches[("latency_regression", "orders")]["dest"] == TD + "orders"
    assert "source" not in searches[("latency_regression", "orders")]  # all its callers
    plain = searches[("plaintext_calls", "payments.shop")]
    assert plain["source"] == "unknown"  # no identity, no service: the graph's `unknown`
    authn = searches[("failed_authentication", "orders")]
    assert authn["kind"] == "authn" and authn["dest"] == TD + "orders"
