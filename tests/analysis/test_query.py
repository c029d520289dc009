"""The query model against a real ledger: each filter, combinations, keyset paging, indexes."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from auditmesh.analysis import graph
from auditmesh.analysis.query import (
    CALL_KINDS,
    UNKNOWN,
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
from auditmesh.analysis.rollup import Rollup
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


# -- the service graph's names, and its calls -------------------------------------------

LEGACY_ID = "spiffe://cluster.local/ns/shop/sa/legacy"


def mixed() -> list[AuditEvent]:
    """Calls in two namespaces (a `frontend` in each), named as the graph names them in every
    way it can: callers with no identity and no service (`unknown`), one known by its SPIFFE
    ID alone, a service whose name has dots, a callee that is only an address; calls reported
    by both sides, by one, without trace context; a hop whose caller's report (no identity)
    and callee's report (orders) name the call differently; and events that are not calls."""
    events: list[AuditEvent] = []
    traces = iter(f"{n:032x}" for n in range(1, 10**6))

    def add(caller: str | None, callee: str, n: int = 1, **details: object) -> None:
        for _ in range(n):
            parts, _, _ = hop(caller, callee, trace_id=next(traces), parent=None, **details)  # type: ignore[arg-type]
            events.extend(parts)

    add("frontend", "payments", 3, time_ns=T0)
    add("frontend", "payments", 2, time_ns=T0 + 65 * 10**9, sides=("inbound",))
    add("frontend", "payments", 2, time_ns=T0 + 70 * 10**9, sides=("outbound",), status=503)
    add("frontend", "reviews", 4, time_ns=T0 + 80 * 10**9, namespace="bookinfo")
    add(None, "frontend", 3, time_ns=T0 + 2 * 10**9, mtls=False)  # the ingress: no identity
    add(None, "payments", 2, time_ns=T0 + 90 * 10**9, sides=("outbound",), mtls=False)
    # an Envoy-style outbound report without the caller, and the callee's report of that hop
    renamed, _, _ = hop("orders", "payments", trace_id=next(traces), parent=None, time_ns=T0)
    outbound, inbound = renamed
    events += [msgspec.structs.replace(outbound, source=Peer(ip="10.1.2.3")), inbound]
    # reported both ways, but without trace context: each report counts
    untraced, _, _ = hop("orders", "payments", trace_id=next(traces), parent=None, time_ns=T0)
    events += [msgspec.structs.replace(e, trace=None) for e in untraced]
    # a caller known by its SPIFFE ID alone (an Envoy inbound line), a dotted service name
    legacy, _, _ = hop("x", "payments", trace_id=next(traces), parent=None, time_ns=T0)
    events += [
        msgspec.structs.replace(e, source=Peer(identity=LEGACY_ID, namespace="shop"))
        for e in legacy
    ]
    dotted, _, _ = hop("x", "payments", trace_id=next(traces), parent=None, time_ns=T0)
    events += [msgspec.structs.replace(e, source=Peer(service="com.example.batch")) for e in dotted]
    # a callee that is an address only
    blind, _, _ = hop("orders", "x", trace_id=next(traces), parent=None, time_ns=T0)
    events += [msgspec.structs.replace(e, destination=Peer(ip="10.9.0.1", port=443)) for e in blind]
    # not calls: an authentication failure by an unknown client, an audit read
    authn = msgspec.structs.replace(
        events[0], id=new_event_id(), kind="authn", http=None, authz=None, trace=None,
        source=Peer(ip="10.7.7.7"),
    )  # fmt: skip
    reader = msgspec.structs.replace(
        authn, id=new_event_id(), kind="audit_read", direction=None, source=None
    )
    return [*events, authn, reader]


@pytest.fixture(scope="module")
def mixed_ledger(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Ledger, list[AuditEvent]]]:
    events = mixed()
    ledger = open_ledger(tmp_path_factory.mktemp("mixed") / "data", origin="test/mixed")
    ledger.log.append([entry_of(e) for e in events])
    yield ledger, events
    ledger.close()


def party_key(peer: Peer | None) -> tuple[str, str]:
    """(namespace, name) of a party as rollup.py keys it."""
    peer = peer or Peer()
    return peer.namespace or "", peer.service or peer.identity or ""


def counted(events: list[AuditEvent]) -> list[int]:
    """The indices of the events the service graph counts (rollup.py `fold`, whole ledger)."""
    answered = {
        (e.trace.trace_id, e.trace.parent_span_id)
        for e in events
        if e.kind in CALL_KINDS and e.direction == "inbound" and e.trace is not None
    }
    chosen = []
    for index, e in enumerate(events):
        if e.kind not in CALL_KINDS:
            continue
        hop_id = None if e.trace is None else e.trace.span_id
        if (
            e.direction == "outbound"
            and e.trace
            and hop_id
            and (e.trace.trace_id, hop_id) in answered
        ):
            continue
        chosen.append(index)
    return chosen


def console_name(namespace: str, service: str) -> str:
    """pages/graphdata.js `partyName`: `service.namespace` whenever the namespace is known."""
    if service.startswith("spiffe://") or not namespace:
        return service
    return f"{service}.{namespace}"


def graph_of(ledger: Ledger, since_ns: int | None = None) -> graph.Graph:
    rollup = Rollup(ledger.store, None)
    try:
        return graph.compute(rollup, since_ns=since_ns, until_ns=None, now_ns=T0 + 10**12)
    finally:
        rollup.close()


@pytest.mark.parametrize("since_ns", [None, T0 + 75 * 10**9])
def test_an_edges_names_select_exactly_the_calls_it_counts(
    mixed_ledger: tuple[Ledger, list[AuditEvent]], since_ns: int | None
) -> None:
    """For every edge of the graph, the filters the console's "Open in event search" sends
    (its ends, calls=once, since the graph's window start) and the names `graph` prints both
    select exactly the events the edge counts: the same events `fold` counted, as many."""
    ledger, events = mixed_ledger
    result = graph_of(ledger, since_ns)
    names = graph.node_names(result)
    assert result.from_ns is not None
    assert len({n for n in names.values()}) == len(names)  # the printed names are all distinct
    if since_ns is None:
        assert {"unknown", "payments.shop", "frontend.bookinfo", LEGACY_ID} <= set(names.values())
    else:  # whole minutes: the window starts before `since`, and the links say so
        assert result.from_ns == T0 + 60 * 10**9
    seen: set[int] = set()
    for edge in result.edges:
        key = (edge.source_namespace, edge.source, edge.dest_namespace, edge.dest)
        want = [
            i
            for i in expected(events, lambda e: e.time_ns >= result.from_ns)  # type: ignore[operator]
            if i in set(counted(events))
            and (*party_key(events[i].source), *party_key(events[i].destination))
            == tuple(k if k != graph.UNKNOWN else "" for k in key)
        ]
        console = Query(
            source=console_name(edge.source_namespace, edge.source),
            dest=console_name(edge.dest_namespace, edge.dest),
            calls="once",
            since_ns=result.from_ns,
            limit=5000,
        )
        printed = replace(
            console,
            source=names[(edge.source_namespace, edge.source)],
            dest=names[(edge.dest_namespace, edge.dest)],
        )
        for query in (console, printed):
            got = [i for i, _ in run(ledger.store, query).rows]
            assert got == want and len(got) == edge.requests, (edge, query)
        seen.update(want)
    assert len(seen) == result.requests  # every counted call belongs to one edge


def test_the_graph_names_select_as_the_rollup_names(
    mixed_ledger: tuple[Ledger, list[AuditEvent]],
) -> None:
    ledger, events = mixed_ledger

    def select(**filters: str) -> list[int]:
        return [i for i, _ in run(ledger.store, Query(limit=5000, **filters)).rows]  # type: ignore[arg-type]

    def key(peer: Peer | None) -> tuple[str, str]:
        return party_key(peer)

    # `service.namespace`: the service in that namespace, not its namesake elsewhere
    assert select(source="frontend.shop") == expected(
        events, lambda e: key(e.source) == ("shop", "frontend")
    )
    assert select(service="frontend.bookinfo") == expected(
        events, lambda e: ("bookinfo", "frontend") in (key(e.source), key(e.destination))
    )
    assert select(dest="payments.shop") == expected(
        events, lambda e: key(e.destination) == ("shop", "payments")
    )
    # a bare name still means the service in any namespace
    assert select(source="frontend") == expected(events, lambda e: src(e).service == "frontend")
    assert len(select(source="frontend")) > len(select(source="frontend.shop"))
    # `unknown`: no identity and no service, whatever the event (an audit read has no source)
    unknown = expected(events, lambda e: key(e.source)[1] == "")
    assert select(source="unknown") == unknown
    assert {events[i].kind for i in unknown} == {"http", "authn", "audit_read"}
    assert select(dest="unknown") == expected(events, lambda e: key(e.destination)[1] == "")
    assert select(service="unknown") == expected(
        events, lambda e: "" in (key(e.source)[1], key(e.destination)[1])
    )
    # a dotted service name is still itself; a SPIFFE ID still the identity
    assert select(source="com.example.batch") == expected(
        events, lambda e: src(e).service == "com.example.batch"
    )
    assert select(source=LEGACY_ID) == expected(events, lambda e: src(e).identity == LEGACY_ID)
    # either side takes what source and dest take (a SPIFFE ID there used to match nothing)
    orders = "spiffe://cluster.local/ns/shop/sa/orders"
    assert select(service=orders) == expected(
        events, lambda e: orders in (src(e).identity, dst(e).identity)
    )
    # no namespace of that name, no service of that name: nothing
    assert select(dest="payments.nowhere") == []


def test_calls_once_counts_each_call_once_preferring_the_callee(
    mixed_ledger: tuple[Ledger, list[AuditEvent]],
) -> None:
    ledger, events = mixed_ledger
    got = [i for i, _ in run(ledger.store, Query(calls="once", limit=5000)).rows]
    assert got == [i for i in expected(events, lambda e: True) if i in set(counted(events))]
    assert len(got) == graph_of(ledger).requests
    # the caller's report of a hop its callee reported is left out; the callee's is in
    renamed_out = next(
        i for i, e in enumerate(events) if e.direction == "outbound" and src(e).ip == "10.1.2.3"
    )
    assert renamed_out not in got and renamed_out + 1 in got
    # with the other filters: the inbound calls are all in, the outbound ones unanswered
    outbound = [
        i for i, _ in run(ledger.store, Query(calls="once", direction="outbound", limit=5000)).rows
    ]
    assert outbound and all(events[i].direction == "outbound" for i in outbound)
    assert run(ledger.store, Query(calls="once", kind="authn")).rows == []


def test_the_new_name_forms_page_and_use_indexes(
    mixed_ledger: tuple[Ledger, list[AuditEvent]],
) -> None:
    ledger, events = mixed_ledger
    for query in (
        Query(source="unknown", dest="payments.shop", calls="once"),
        Query(dest="payments.shop"),
        Query(source="unknown"),
        Query(service="frontend.shop"),
        Query(service="unknown", order="oldest"),
        Query(source="frontend.shop", dest="payments", decision="allow"),
    ):
        for after in (None, Cursor(T0, 10, query.fingerprint())):
            text, params = sql(query, after)
            plan = [row[3] for row in ledger.store.query("EXPLAIN QUERY PLAN " + text, params)]
            scans = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
            assert scans and all("USING" in step for step in scans), (query, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (query, plan)
        whole = [i for i, _ in run(ledger.store, replace(query, limit=5000)).rows]
        paged: list[int] = []
        cursor = None
        while True:
            page = run(ledger.store, replace(query, limit=3), cursor)
            paged.extend(i for i, _ in page.rows)
            if page.next is None:
                break
            cursor = page.next
        assert whole and paged == whole, query
    del events


def test_calls_is_a_filter_of_its_own_and_old_cursors_stay_valid() -> None:
    query, _ = parse_params({"dest": "payments.shop", "calls": "once"}, T0)
    assert query == Query(dest="payments.shop", calls="once")
    assert "calls=once" in describe(query)
    with pytest.raises(QueryError, match="calls: 'twice' is not one of once"):
        parse_params({"calls": "twice"}, T0)
    # the fingerprints of queries without `calls` are those issued before it existed
    assert Query(dest="catalog").fingerprint() == "d7279039da010a21"
    assert Query(source="unknown", order="oldest").fingerprint() == "0230a13deaf9f33f"
    assert Query(dest="catalog", calls="once").fingerprint() != Query(dest="catalog").fingerprint()
    assert graph.UNKNOWN == UNKNOWN


def test_parse_time_keeps_nanoseconds() -> None:
    """An event time shown to the nanosecond (the console's links) reads back as itself."""
    assert parse_time("2025-11-28T03:20:00.123456789Z", T0) == T0 + 123_456_789
    assert parse_time("2025-11-28T03:20:00.000000001Z", T0) == T0 + 1
    assert parse_time("2025-11-28T04:20:00.5+01:00", T0) == T0 + 500_000_000
    assert parse_time("2025-11-28T03:20:00.1234567899Z", T0) == T0 + 123_456_789
    assert parse_time("2025-11-28T03:20:00,25Z", T0) == T0 + 250_000_000
    assert parse_time("1969-12-31T23:59:59.5Z", T0) == -500_000_000
    with pytest.raises(QueryError, match="time zone"):
        parse_time("2025-11-28T03:20:00.5", T0)


def test_the_graphs_spelled_out_names_select_their_nodes_calls(tmp_path: Path) -> None:
    """Where `service.namespace` cannot tell two nodes apart, the graph spells the namespace
    out (`a (namespace b)`, `a.b (no namespace)`); those names, printed by `graph`, select
    exactly each node's calls in `query` too (they matched nothing before)."""
    web = "spiffe://cluster.local/ns/shop/sa/web"
    traces = iter(f"{n:032x}" for n in range(1, 10**6))
    events: list[AuditEvent] = []

    def add(source: Peer, callee: str, n: int) -> None:
        for _ in range(n):
            parts, _, _ = hop("x", callee, trace_id=next(traces), parent=None, time_ns=T0)
            events.extend(msgspec.structs.replace(e, source=source) for e in parts)

    add(Peer(service="a.b"), "x", 1)  # a service named a.b, no namespace
    add(Peer(service="a", namespace="b"), "x", 2)  # the service a of the namespace b
    add(Peer(identity=web, namespace="shop"), "api", 3)  # one SPIFFE ID in two namespaces
    add(Peer(identity=web), "api", 4)
    ledger = open_ledger(tmp_path / "data", origin="test/spelled")
    try:
        ledger.log.append([entry_of(e) for e in events])
        result = graph_of(ledger)
        names = graph.node_names(result)
        spelled = {name for name in names.values() if name.endswith(")")}
        assert spelled == {
            "a.b (no namespace)",
            "a (namespace b)",
            f"{web} (namespace shop)",
            f"{web} (no namespace)",
        }
        for edge in result.edges:
            source = names[(edge.source_namespace, edge.source)]
            query = Query(source=source, calls="once", since_ns=result.from_ns, limit=100)
            got = [i for i, _ in run(ledger.store, query).rows]
            assert len(got) == edge.requests, (source, got)
            assert {party_key(events[i].source) for i in got} == {
                (edge.source_namespace, edge.source)
            }
    finally:
        ledger.close()


def test_the_unknown_parameter_error_does_not_grow_with_the_request() -> None:
    made_up = {f"p{i:04d}" + "x" * 200: "1" for i in range(2_000)}
    for parse in (lambda: parse_params(made_up, T0), lambda: parse_window(made_up, T0)):
        with pytest.raises(QueryError) as refused:
            parse()
        message = str(refused.value)
        assert "'p0000" in message and "and 1,995 more" in message
        assert "p0005" not in message and len(message) < 600
