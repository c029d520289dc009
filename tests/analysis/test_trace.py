"""The call tree of a trace: both sides of a hop merged, parents by span, figures per call."""

from __future__ import annotations

import json

import msgspec
import pytest

from auditmesh.analysis import trace
from auditmesh.collector import entry_of
from auditmesh.datadir import Ledger
from auditmesh.events import AuditEvent, Trace
from tests.analysis.calls import T0, hop, span

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MS = 1_000_000


def checkout() -> dict[str, list[AuditEvent]]:
    """A client without a sidecar → frontend → orders → {payments (denied), catalog (the
    callee never reported: connection refused)}, and frontend → catalog, both sides each."""
    client_span = span()
    front, _, front_in = hop(
        None, "frontend", trace_id=TRACE, parent=client_span, time_ns=T0,
        sides=("inbound",), duration_us=9000, path="/checkout", method="POST",
    )  # fmt: skip
    orders, _, orders_in = hop(
        "frontend", "orders", trace_id=TRACE, parent=front_in, time_ns=T0 + 1 * MS,
        duration_us=6000, path="/orders", method="POST",
    )  # fmt: skip
    payments, _, _ = hop(
        "orders", "payments", trace_id=TRACE, parent=orders_in, time_ns=T0 + 2 * MS,
        duration_us=800, status=403, decision="deny", path="/charges", method="POST",
    )  # fmt: skip
    refused, _, _ = hop(
        "orders", "catalog", trace_id=TRACE, parent=orders_in, time_ns=T0 + 3 * MS,
        duration_us=300, status=503, decision=None, sides=("outbound",), path="/stock",
    )  # fmt: skip
    listing, _, _ = hop(
        "frontend", "catalog", trace_id=TRACE, parent=front_in, time_ns=T0 + 7 * MS,
        duration_us=1500, path="/products",
    )  # fmt: skip
    return {
        "front": front,
        "orders": orders,
        "payments": payments,
        "refused": refused,
        "listing": listing,
    }


def indexed(events: list[AuditEvent]) -> list[tuple[int, AuditEvent]]:
    return list(enumerate(events))


def test_a_multi_hop_trace_reported_by_both_sides_is_one_tree() -> None:
    parts = checkout()
    # arrival order: callees' sidecars often flush before callers'
    events = [
        *parts["payments"][::-1],
        *parts["front"],
        *parts["listing"],
        *parts["orders"][::-1],
        *parts["refused"],
    ]
    roots = trace.build(indexed(events))
    assert len(roots) == 1
    drawn = [
        (depth, trace.peer_name(call.source), trace.peer_name(call.destination))
        for depth, call in trace.walk(roots)
    ]
    assert drawn == [
        (0, "10.9.9.9:40000", "frontend"),
        (1, "frontend", "orders"),
        (2, "orders", "payments"),
        (2, "orders", "catalog"),
        (1, "frontend", "catalog"),
    ]
    calls = [call for _, call in trace.walk(roots)]
    root, orders, payments, refused, listing = calls
    assert root.outbound is None and root.inbound is not None
    for merged, part in ((orders, "orders"), (payments, "payments"), (listing, "listing")):
        assert merged.outbound is not None and merged.inbound is not None
        assert {merged.outbound.event.id, merged.inbound.event.id} == {e.id for e in parts[part]}
    assert refused.inbound is None and refused.status == 503 and refused.outcome == "failure"
    assert orders.duration_us == 6000  # the caller's view
    assert payments.status == 403
    payments_authz = payments.authz_side
    assert payments_authz is not None and payments_authz is payments.inbound
    body = trace.to_json(TRACE, roots)
    assert body["events"] == len(events) and body["calls"] == 5
    assert body["failures"] == 2 and body["denials"] == 1
    assert body["duration_us"] == 8900  # the root, seen by frontend's inbound side only
    first = body["roots"][0]["children"][0]
    assert first["destination"] == "orders" and first["method"] == "POST"
    assert first["outbound"]["duration_us"] == 6000 and first["inbound"]["duration_us"] == 5900
    denied = first["children"][0]
    assert (denied["decision"], denied["policy"], denied["status"]) == (
        "deny",
        "shop/payments-policy",
        403,
    )
    assert denied["error"] == {"type": "rbac_access_denied", "message": ""}


def test_calls_whose_parent_is_missing_are_roots_in_time_order() -> None:
    parts = checkout()
    roots = trace.build(indexed([*parts["listing"], *parts["payments"]]))
    assert [trace.peer_name(r.destination) for r in roots] == ["payments", "catalog"]


def test_a_forged_cycle_is_cut_and_every_call_stays() -> None:
    a, b = span(), span()
    parts = checkout()
    first = parts["listing"][0]
    second = parts["payments"][0]
    assert first.trace is not None and second.trace is not None
    looped = [
        msgspec.structs.replace(first, trace=Trace(trace_id=TRACE, span_id=a, parent_span_id=b)),
        msgspec.structs.replace(second, trace=Trace(trace_id=TRACE, span_id=b, parent_span_id=a)),
    ]
    roots = trace.build(indexed(looped))
    assert len(list(trace.walk(roots))) == 2 and len(roots) == 1


def test_load_reads_one_trace_in_ledger_order(ledger: Ledger) -> None:
    parts = checkout()
    events = [e for part in parts.values() for e in part]
    ledger.log.append([entry_of(e) for e in events])
    loaded = trace.load(ledger.store, TRACE)
    assert [i for i, _ in loaded] == list(range(len(events)))
    assert trace.load(ledger.store, "0" * 32) == []


def chain(calls: int) -> list[AuditEvent]:
    """A forged trace: each call made while serving the one before, `calls` levels deep."""
    events: list[AuditEvent] = []
    parent = span()
    for n in range(calls):
        made, _, parent = hop(
            f"svc{n}", f"svc{n + 1}", trace_id=TRACE, parent=parent, time_ns=T0 + n * MS,
            sides=("inbound",),
        )  # fmt: skip
        events.extend(made)
    return events


def test_a_chain_deeper_than_max_depth_is_cut_into_marked_roots_and_still_encodes() -> None:
    """Regression: 600 nested calls exhausted the recursion of call_json (a traceback in
    `auditmesh trace`, a 500 from /v1/traces/{id})."""
    roots = trace.build(indexed(chain(600)))
    depths = [depth for depth, _ in trace.walk(roots)]
    assert len(depths) == 600 and max(depths) == trace.MAX_DEPTH
    body = trace.to_json(TRACE, roots)
    assert body["calls"] == 600 and body["cut_calls"] == len(roots) - 1 == 600 // 65
    assert [root["cut"] for root in body["roots"]] == [False] + [True] * (len(roots) - 1)
    assert json.loads(json.dumps(body)) == body
    assert msgspec.json.decode(msgspec.json.encode(body)) == body


def test_a_trace_with_more_events_than_shown_says_so(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "MAX_TRACE_EVENTS", 5)
    events = chain(7)
    ledger.log.append([entry_of(e) for e in events])
    body = trace.trace_json(ledger.store, TRACE)
    assert body is not None and body["truncated"] is True and body["events"] == 5
    assert trace.trace_json(ledger.store, "0" * 32) is None
    monkeypatch.setattr(trace, "MAX_TRACE_EVENTS", 7)
    body = trace.trace_json(ledger.store, TRACE)
    assert body is not None and body["truncated"] is False and body["events"] == 7
