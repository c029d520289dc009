"""`GET /metrics`: counters of committed events, ingest counts, ledger gauges at scrape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auditmesh.collector import Collector
from auditmesh.datadir import Ledger
from auditmesh.events import HTTP, TCP, AuditEvent, Authz, Peer, encode_ndjson
from auditmesh.server.metrics import (
    COL_DECISION,
    COL_DEST_ID,
    COL_DEST_SERVICE,
    COL_KIND,
    COL_OUTCOME,
    COL_SOURCE_ID,
    COL_SOURCE_SERVICE,
    COL_STATUS,
    CONTENT_TYPE,
    MAX_PARTIES,
    Metrics,
    status_label,
)
from auditmesh.serverproc import ServerProcess
from auditmesh.store.base import columns_of
from tests.conftest import START_NS, generate

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def expected_requests(events: list[AuditEvent]) -> Counter[tuple[tuple[str, str], ...]]:
    tally: Counter[tuple[tuple[str, str], ...]] = Counter()
    for e in events:
        assert e.source is not None and e.destination is not None and e.http is not None
        labels = {
            "source": e.source.service or "",
            "destination": e.destination.service or "",
            "status": str(e.http.status),
            "decision": e.authz.decision if e.authz else "none",
            "direction": e.direction or "none",
        }
        tally[tuple(sorted(labels.items()))] += 1
    return tally


def test_column_positions_match_the_store(ledger: Ledger) -> None:
    event = generate(1)[0]
    columns = columns_of(event)
    assert event.source is not None and event.destination is not None and event.http
    assert columns[COL_KIND] == event.kind
    assert columns[COL_SOURCE_ID] == event.source.identity
    assert columns[COL_SOURCE_SERVICE] == event.source.service
    assert columns[COL_DEST_ID] == event.destination.identity
    assert columns[COL_DEST_SERVICE] == event.destination.service
    assert columns[COL_STATUS] == event.http.status
    assert columns[COL_DECISION] == (event.authz.decision if event.authz else None)
    assert columns[COL_OUTCOME] == event.outcome


def test_counts_only_what_was_committed(ledger: Ledger, collector: Collector) -> None:
    metrics = Metrics(ledger.store, collector, clock_ns=lambda: START_NS)
    events = generate(400)
    collector.submit(events[:250]).result()
    collector.submit(events[200:]).result()  # 50 duplicates: logged once, counted once
    collector.submit(events[:10] + events[:10]).result()  # all duplicates
    found = samples(metrics.render().decode())
    requests = {
        labels: value
        for (name, labels), value in found.items()
        if name == "auditmesh_requests_total"
    }
    assert requests == expected_requests(events)
    assert sum(requests.values()) == 400
    assert any(dict(labels)["decision"] == "deny" for labels in requests)
    assert {"200", "403", "404", "500", "503"} == {dict(labels)["status"] for labels in requests}
    kinds = Counter((e.kind, e.outcome) for e in events)
    for (kind, outcome), count in kinds.items():
        key = ("auditmesh_events_total", (("kind", kind), ("outcome", outcome)))
        assert found[key] == count
    assert found[("auditmesh_ledger_entries", ())] == 400
    assert found[("auditmesh_collector_failed", ())] == 0
    assert not [name for name, _ in found if name.endswith("_created")]  # one series a count
    # the checkpoint a new log signs as the collector starts; none since (the interval)
    assert found[("auditmesh_checkpoint_size", ())] == 0


def test_tcp_and_anonymous_peers_keep_labels_bounded(ledger: Ledger, collector: Collector) -> None:
    metrics = Metrics(ledger.store, collector)
    base = generate(2)
    tcp = AuditEvent(
        id=base[0].id,
        time_ns=START_NS,
        reporter="spiffe://cluster.local/ns/shop/sa/db",
        kind="tcp",
        outcome="success",
        source=Peer(identity="spiffe://cluster.local/ns/shop/sa/orders"),
        destination=Peer(ip="10.0.0.20", port=5432),
        tcp=TCP(sent_bytes=1, received_bytes=2),
        authz=Authz(decision="audit"),
    )
    anonymous = AuditEvent(
        id=base[1].id,
        time_ns=START_NS,
        reporter="ingest:envoy:access.log",
        kind="http",
        outcome="success",
        http=HTTP(method="GET", path="/x/123", status=204),
    )
    collector.submit([tcp, anonymous]).result()
    found = samples(metrics.render().decode())
    tcp_labels = (
        ("decision", "audit"),
        ("destination", "unknown"),
        ("direction", "none"),
        ("source", "spiffe://cluster.local/ns/shop/sa/orders"),
        ("status", "none"),
    )
    assert found[("auditmesh_requests_total", tcp_labels)] == 1
    anon_labels = (
        ("decision", "none"),
        ("destination", "unknown"),
        ("direction", "none"),
        ("source", "unknown"),
        ("status", "204"),
    )
    assert found[("auditmesh_requests_total", anon_labels)] == 1
    assert status_label(99) == status_label(600) == status_label(None) == "none"
    assert status_label(True) == status_label("200") == "none"
    assert (status_label(100), status_label(503), status_label(599)) == ("100", "503", "599")


def test_a_call_seen_by_both_sidecars_counts_once_per_direction(
    ledger: Ledger, collector: Collector
) -> None:
    metrics = Metrics(ledger.store, collector)
    calls = 3
    events: list[AuditEvent] = []
    for base in generate(2 * calls, seed=5):
        side = "outbound" if len(events) % 2 == 0 else "inbound"
        events.append(
            msgspec.structs.replace(
                base,
                kind="http",
                direction=side,
                source=Peer(service="orders"),
                destination=Peer(service="payments"),
                http=HTTP(method="POST", path="/pay", status=201),
                authz=Authz(decision="allow") if side == "inbound" else None,
            )
        )
    collector.submit(events).result()
    found = samples(metrics.render().decode())
    by_direction = Counter[str]()
    for (name, labels), value in found.items():
        if name == "auditmesh_requests_total":
            by_direction[dict(labels)["direction"]] += int(value)
    assert by_direction == {"inbound": calls, "outbound": calls}


def test_made_up_service_names_cannot_grow_the_series_without_bound(
    ledger: Ledger, collector: Collector
) -> None:
    # anyone may POST events: 600 callers with random names make at most MAX_PARTIES series
    metrics = Metrics(ledger.store, collector)
    events = [
        msgspec.structs.replace(e, source=Peer(service=f"made-up-{i}"))
        for i, e in enumerate(generate(600, seed=11))
    ]
    collector.submit(events).result()
    found = samples(metrics.render().decode())
    sources = {
        dict(labels)["source"] for (name, labels) in found if name == "auditmesh_requests_total"
    }
    assert len(sources) <= MAX_PARTIES + 1 and "other" in sources
    counted = sum(v for (name, _), v in found.items() if name == "auditmesh_requests_total")
    assert counted == sum(1 for e in events if e.kind in ("http", "tcp"))  # none lost


def test_checkpoint_gauges_and_isolated_registries(ledger: Ledger, collector: Collector) -> None:
    first = Metrics(ledger.store, collector, clock_ns=lambda: now)
    second = Metrics(ledger.store, collector)
    collector.submit(generate(5)).result()
    ledger.log.checkpoint()
    latest = ledger.store.latest_checkpoint()
    assert latest is not None
    now = latest.signed_ns + 2_500_000_000
    first.count_ingest("otlp-http", accepted=7, rejected=2)
    first.count_ingest("envoy", accepted=0, rejected=0)
    first.set_spool_depth("spiffe://cluster.local/ns/shop/sa/orders", 42)
    found = samples(first.render().decode())
    assert found[("auditmesh_checkpoint_size", ())] == 5
    assert found[("auditmesh_checkpoint_age_seconds", ())] == pytest.approx(2.5)
    assert found[("auditmesh_ingest_accepted_total", (("adapter", "otlp-http"),))] == 7
    assert found[("auditmesh_ingest_rejected_total", (("adapter", "otlp-http"),))] == 2
    assert found[("auditmesh_ingest_accepted_total", (("adapter", "envoy"),))] == 0
    spool = (
        "auditmesh_sidecar_spool_depth",
        (("reporter", "spiffe://cluster.local/ns/shop/sa/orders"),),
    )
    assert found[spool] == 42
    other = samples(second.render().decode())  # same ledger, its own registry
    assert ("auditmesh_ingest_accepted_total", (("adapter", "otlp-http"),)) not in other
    assert spool not in other
    assert other[("auditmesh_events_total", (("kind", "http"), ("outcome", "success")))] == 5


def test_a_failing_observer_does_not_fail_the_commit(ledger: Ledger, collector: Collector) -> None:
    def broken(entries: object) -> None:
        raise RuntimeError("boom")

    collector.observe_commits(broken)
    assert collector.submit(generate(3)).result() == [0, 1, 2]


@pytest.mark.integration
def test_metrics_of_a_real_server(tmp_path: Path) -> None:
    events = generate(300, seed=5)
    with ServerProcess(tmp_path / "data", extra=["--checkpoint-interval", "0.2"]) as server:
        for batch in (events[:200], events[100:], events[:50]):
            answer = httpx.post(server.url + "/v1/events", content=encode_ndjson(batch))
            assert answer.status_code == 200, answer.text
        refused = httpx.post(server.url + "/v1/events", content=b'{"id": "nope"}\n')
        assert refused.status_code == 400
        token = (server.data_dir / "keys" / "api.token").read_text().strip()
        httpx.get(  # waits for a checkpoint; reads need the API token
            server.url + f"/v1/events/{events[0].id}",
            headers={"authorization": f"Bearer {token}"},
        )
        scrape = httpx.get(server.url + "/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"] == CONTENT_TYPE
    found = samples(scrape.text)
    requests = {
        labels: value
        for (name, labels), value in found.items()
        if name == "auditmesh_requests_total"
    }
    assert requests == expected_requests(events)
    assert found[("auditmesh_ledger_entries", ())] == 301  # 300 + the audit_read of the GET
    assert found[("auditmesh_checkpoint_size", ())] <= 301
    assert 0 <= found[("auditmesh_checkpoint_age_seconds", ())] < 30
