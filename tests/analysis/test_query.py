"""The query model against a real ledger: each filter, combinations, keyset paging, indexes."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from auditmesh.analysis.query import (
    Cursor,
    Query,
    QueryError,
    check_window,
    describe,
    parse_params,
    parse_time,
    parse_window,
    run,
    single_params,
    sql,
)
from auditmesh.collector import entry_of
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent, Peer, new_event_id
from tests.analysis.calls import T0, hop
from tests.conftest import generate

Match = Callable[[AuditEvent], bool]


def corpus() -> list[AuditEvent]:
    """Generated traffic (inbound, all kinds of status), plus outbound sides, an audit read, a
    service calling itself, and events sharing one timestamp (paging ties)."""
    events = generate(700, seed=3)
    extra, _, _ = hop("frontend", "orders", trace_id="a" * 32, parent=None, time_ns=T0)
    same_time = [
        msgspec.structs.replace(e, time_ns=events[100].time_ns, id=new_event_id())
        for e in events[200:206]
    ]
    reader = msgspec.structs.replace(
        events[0],
        id=new_event_id(),
        kind="audit_read",
        http=None,
        authz=None,
        trace=None,
        direction=None,
    )
    self_call = msgspec.structs.replace(
        events[5],
        id=new_event_id(),
        source=Peer(service="catalog", namespace="shop"),
        destination=Peer(service="catalog", namespace="shop"),
    )
    return [*events, *extra, *same_time, reader, self_call]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, list[AuditEvent]]]:
    events = corpus()
    ledger = open_ledger(tmp_path_factory.mktemp("query") / "data", origin="test/query")
    ledger.log.append([entry_of(e) for e in events])
    yield ledger, events
    ledger.close()


def expected(events: list[AuditEvent], match: Match, order: str = "newest") -> list[int]:
    chosen = [(i, e) for i, e in enumerate(events) if match(e)]
    if order == "newest":
        chosen.sort(key=lambda p: (p[1].time_ns, p[0]), reverse=True)
    elif order == "oldest":
        chosen.sort(key=lambda p: (p[1].time_ns, p[0]))
    return [i for i, _ in chosen]


def status(e: AuditEvent) -> int | None:
    return None if e.http is None else e.http.status


def src(e: AuditEvent) -> Peer:
    return e.source or Peer()


def dst(e: AuditEvent) -> Peer:
    return e.destination or Peer()


FRONTEND_ID = "spiffe://cluster.local/ns/shop/sa/frontend"
CASES: list[tuple[str, Query, Match]] = [
    ("source name", Query(source="frontend"), lambda e: src(e).service == "frontend"),
    ("source id", Query(source=FRONTEND_ID), lambda e: src(e).identity == FRONTEND_ID),
    ("dest name", Query(dest="payments"), lambda e: dst(e).service == "payments"),
    (
        "dest id",
        Query(dest="spiffe://cluster.local/ns/shop/sa/orders"),
        lambda e: dst(e).identity == "spiffe://cluster.local/ns/shop/sa/orders",
    ),
    (
        "service, either side",
        Query(service="catalog"),
        lambda e: "catalog" in (src(e).service, dst(e).service),
    ),
    (
        "path exact",
        Query(path="/charges"),
        lambda e: e.http is not None and e.http.path == "/charges",
    ),
    (
        "path prefix",
        Query(path="/orders*"),
        lambda e: e.http is not None and (e.http.path or "").startswith("/orders"),
    ),
    ("status code", Query(status="404"), lambda e: status(e) == 404),
    ("status class", Query(status="5xx"), lambda e: 500 <= (status(e) or 0) < 600),
    (
        "decision deny",
        Query(decision="deny"),
        lambda e: e.authz is not None and e.authz.decision == "deny",
    ),
    (
        "decision allow",
        Query(decision="allow"),
        lambda e: e.authz is not None and e.authz.decision == "allow",
    ),
    (
        "trace",
        Query(trace_id="a" * 32),
        lambda e: e.trace is not None and e.trace.trace_id == "a" * 32,
    ),
    ("kind audit_read", Query(kind="audit_read"), lambda e: e.kind == "audit_read"),
    ("kind http", Query(kind="http"), lambda e: e.kind == "http"),
    ("direction", Query(direction="outbound"), lambda e: e.direction == "outbound"),
    (
        "combined",
        Query(source="batch-report", dest="payments", decision="deny", status="4xx"),
        lambda e: (
            src(e).service == "batch-report"
            and dst(e).service == "payments"
            and e.authz is not None
            and e.authz.decision == "deny"
            and 400 <= (status(e) or 0) < 500
        ),
    ),
    (
        "service and path",
        Query(service="orders", path="/orders*"),
        lambda e: (
            "orders" in (src(e).service, dst(e).service)
            and e.http is not None
            and (e.http.path or "").startswith("/orders")
        ),
    ),
]


@pytest.mark.parametrize(("name", "query", "match"), CASES, ids=[c[0] for c in CASES])
def test_each_filter_selects_exactly_its_events_newest_first(
    filled: tuple[Ledger, list[AuditEvent]], name: str, query: Query, match: Match
) -> None:
    ledger, events = filled
    want = expected(events, match)
    assert want, f"the corpus has no event for {name}"
    got = [i for i, _ in run(ledger.store, replace(query, limit=5000)).rows]
    assert got == want


def test_since_and_until_bound_event_time(filled: tuple[Ledger, list[AuditEvent]]) -> None:
    ledger, events = filled
    low, high = events[150].time_ns, events[400].time_ns
    query = Query(since_ns=low, until_ns=high, order="oldest", limit=5000)
    got = [i for i, _ in run(ledger.store, query).rows]
    assert got == expected(events, lambda e: low <= e.time_ns < high, "oldest")


@pytest.mark.parametrize("order", ["newest", "oldest", "index"])
@pytest.mark.parametrize("page_size", [1, 7, 50])
def test_paging_with_the_cursor_has_no_duplicates_or_gaps(
    filled: tuple[Ledger, list[AuditEvent]], order: str, page_size: int
) -> None:
    ledger, events = filled
    base = Query(dest="catalog", order=order, limit=page_size)  # type: ignore[arg-type]
    want = expected(events, lambda e: dst(e).service == "catalog", order)
    if page_size == 1:
        want = want[:60]  # enough to cross the tie of six events at one time
    got: list[int] = []
    cursor = None
    while len(got) < len(want):
        page = run(ledger.store, base, cursor)
        got.extend(i for i, _ in page.rows)
        cursor = page.next
        if cursor is None:
            break
    assert got[: len(want)] == want
    if page_size > 1:
        assert cursor is None  # the last page says so


def test_the_tie_of_equal_times_pages_without_loss(
    filled: tuple[Ledger, list[AuditEvent]],
) -> None:
    ledger, events = filled
    moment = events[100].time_ns
    query = Query(since_ns=moment, until_ns=moment + 1, limit=2)
    seen: list[int] = []
    cursor = None
    while True:
        page = run(ledger.store, query, cursor)
        seen.extend(i for i, _ in page.rows)
        if page.next is None:
            break
        cursor = page.next
    assert seen == expected(events, lambda e: e.time_ns == moment)
    assert len(seen) == 7


def test_a_cursor_is_bound_to_its_filters(filled: tuple[Ledger, list[AuditEvent]]) -> None:
    ledger, _ = filled
    page = run(ledger.store, Query(dest="catalog", limit=3))
    assert page.next is not None
    with pytest.raises(QueryError, match="other filters"):
        run(ledger.store, Query(dest="orders", limit=3), page.next)
    # another page size, or a relative window resolved a moment later, is the same query
    assert run(ledger.store, Query(dest="catalog", limit=5), page.next).rows
    assert run(ledger.store, Query(dest="catalog", since_ns=1), page.next).rows
    with pytest.raises(QueryError, match="other filters or order"):
        run(ledger.store, Query(dest="catalog", order="oldest"), page.next)
    with pytest.raises(QueryError, match="not a cursor"):
        run(ledger.store, Query(dest="catalog"), "bm90IGEgY3Vyc29y")
    with pytest.raises(QueryError, match="not a cursor"):
        run(ledger.store, Query(dest="catalog"), "%%%")


def test_numbers_beyond_sqlite_integers_are_refused_not_a_traceback(
    filled: tuple[Ledger, list[AuditEvent]],
) -> None:
    """Regression: `query --limit 9223372036854775807` and a forged cursor holding a uint64
    raised OverflowError (a traceback in the CLI, a 500 from /v1/events)."""
    ledger, _ = filled
    with pytest.raises(QueryError, match="limit: give a number from 1 to"):
        Query(limit=2**63 - 1)
    assert run(ledger.store, Query(limit=2**62)).rows  # the largest limit still runs
    query = Query(dest="catalog")
    for time_ns, index in ((2**64 - 1, 5), (1, 2**64 - 1), (-1, 5)):
        raw = msgspec.json.encode([1, time_ns, index, query.fingerprint()])
        forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        with pytest.raises(QueryError, match="not a cursor this server issued"):
            run(ledger.store, query, forged)


def test_the_common_filters_use_an_index(filled: tuple[Ledger, list[AuditEvent]]) -> None:
    ledger, _ = filled
    queries = [
        Query(),
        Query(source="frontend"),
        Query(source=FRONTEND_ID),
        Query(dest="payments"),
        Query(dest="spiffe://cluster.local/ns/shop/sa/payments"),
        Query(service="catalog"),
        Query(path="/charges"),
        Query(status="404"),
        Query(decision="deny"),
        Query(kind="audit_read"),
        Query(trace_id="a" * 32),
        Query(since_ns=1),
        Query(source="frontend", status="5xx"),
        Query(dest="payments", decision="deny"),
        Query(path="/orders*"),
        Query(status="5xx"),
    ]
    for query in queries:
        for after in (None, Cursor(T0, 10, query.fingerprint())):
            text, params = sql(query, after)
            plan = [row[3] for row in ledger.store.query("EXPLAIN QUERY PLAN " + text, params)]
            scans = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
            assert scans and all("USING" in step for step in scans), (query, plan)
            assert not any(step.startswith("SCAN events") and "INDEX" not in step for step in plan)
            sorts = any("TEMP B-TREE" in step for step in plan)
            ranged = query.status == "5xx" or query.path == "/orders*" or query.trace_id
            if not ranged:  # (column, time_ns) indexes give newest-first without sorting
                assert not sorts, (query, plan)


def test_parse_params_builds_the_same_query_as_the_cli() -> None:
    now = T0
    query, cursor = parse_params(
        {
            "source": "frontend",
            "status": "5xx",
            "since": "15m",
            "until": "2025-11-28T03:20:00Z",
            "trace": "A" * 32,
            "limit": "20",
            "order": "index",
            "cursor": "abc",
        },
        now,
    )
    assert query == Query(
        source="frontend",
        status="5xx",
        since_ns=now - 15 * 60 * 10**9,
        until_ns=T0,
        trace_id="a" * 32,
        limit=20,
        order="index",
    )
    assert cursor == "abc"
    assert describe(query).startswith("source=frontend&status=5xx&trace=")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sauce": "x"}, "unknown parameter"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "6xx"}, "status"),
        ({"status": "99"}, "status"),
        ({"decision": "maybe"}, "decision"),
        ({"kind": "smtp"}, "kind"),
        ({"order": "random"}, "order"),
        ({"trace": "xyz"}, "trace"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-01-01T00:00:00"}, "time zone"),
        ({"until": "9999-12-31T00:00:00Z"}, "until: .* is out of range"),
        ({"since": "0001-01-01T00:00:00Z"}, "out of range"),
        ({"since": "99999999d"}, "out of range"),
        ({"since": "9" * 30}, "out of range"),
        ({"path": ""}, "path"),
        ({"source": ""}, "source"),
        ({"since": "1h", "until": "2h"}, r"until \(2025-11-28T01:20:00Z\) is not after since"),
        ({"since": str(T0), "until": str(T0)}, "is not after since"),
    ],
)
def test_bad_parameters_are_refused_by_name(params: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_params(params, T0)


def test_repeated_parameters_are_refused_not_resolved_silently() -> None:
    assert single_params([("since", "1h"), ("limit", "5")]) == {"since": "1h", "limit": "5"}
    with pytest.raises(QueryError, match="since: given more than once"):
        single_params([("since", "1h"), ("limit", "5"), ("since", "2h")])


def test_a_window_must_end_after_it_starts() -> None:
    check_window(None, 5)
    check_window(5, None)
    check_window(4, 5)
    for since, until in ((5, 5), (6, 5)):
        with pytest.raises(QueryError, match="the window is empty"):
            check_window(since, until)
    assert parse_window({"until": "1h"}, T0, default_since="2h") == (
        T0 - 7200 * 10**9,
        T0 - 3600 * 10**9,
    )
    assert parse_window({}, T0) == (None, None)
    with pytest.raises(QueryError, match="unknown parameter"):
        parse_window({"service": "x"}, T0)
    with pytest.raises(QueryError, match="not after since"):
        parse_window({"until": "3h"}, T0, default_since="2h")


def test_parse_time_accepts_nanoseconds_durations_and_rfc3339() -> None:
    assert parse_time("123", T0) == 123
    assert parse_time("now", T0) == T0  # what the console's Until field shows when empty
    assert parse_time("2h", T0) == T0 - 7200 * 10**9
    assert parse_time("2025-11-28T03:20:00.5+00:00", T0) == T0 + 500_000_000
    assert parse_time("2025-11-28t03:20:00.5z", T0) == T0 + 500_000_000  # RFC 3339 §5.6


def test_a_ledger_without_events_answers_an_empty_page(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, origin="test/empty")
    try:
        page = run(ledger.store, Query(service="x"))
    finally:
        ledger.close()
    assert page.rows == [] and page.next is None


def test_a_range_filter_alone_chooses_its_index_or_the_time_scan_by_count(
    filled: tuple[Ledger, list[AuditEvent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditmesh.analysis import query as module

    ledger, events = filled
    want = expected(events, lambda e: 400 <= (status(e) or 0) < 500)
    for cap in (1, 10**6):  # dense: time scan; sparse: the status index, keys sorted
        monkeypatch.setattr(module, "RANGE_CAP", cap)
        got = [i for i, _ in run(ledger.store, Query(status="4xx", limit=5000)).rows]
        assert got == want
    dense, _ = sql(Query(status="4xx"), range_index=False)
    plan = [row[3] for row in ledger.store.query("EXPLAIN QUERY PLAN " + dense, [400, 500, 9])]
    assert plan == ["SCAN events USING INDEX events_time"]
    narrowed, params = sql(Query(dest="payments", status="5xx"))
    plan = [row[3] for row in ledger.store.query("EXPLAIN QUERY PLAN " + narrowed, params)]
    assert plan == ["SEARCH events USING INDEX events_dest_service (dest_service=?)"]
