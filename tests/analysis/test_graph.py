"""The service graph: rollup pairing and chunking, figures checked by hand, JSON and DOT."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from auditmesh.analysis import graph
from auditmesh.analysis.rollup import (
    CALL_COLUMNS,
    CALLS,
    MINUTE_NS,
    ROLLUP_DB,
    Call,
    Rollup,
    fold,
    latency_bucket,
)
from auditmesh.collector import entry_of
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent
from tests.analysis.calls import T0, hop
from tests.analysis.test_trace import checkout
from tests.conftest import generate

SECOND = 1_000_000_000


def hand_made() -> list[AuditEvent]:
    """Calls whose graph figures are computed by hand in the test below.

    frontend → catalog: 10 calls, inbound side only, durations 100, 200, … 1000 µs (the 10th
        is 1234 µs), 2 of them 503, one plaintext, request 10 B, response 100 B each.
    frontend → orders: 3 calls reported by both sides (6 events), 2000 µs as the caller saw.
    orders → payments: 1 call seen by the caller only (the callee never reported), 503.
    batch-report → payments: 4 denied calls (403), both sides, 300 µs.
    """
    events: list[AuditEvent] = []
    for n in range(10):
        parts, _, _ = hop(
            "frontend", "catalog", trace_id=f"{n + 1:032x}", parent=None,
            time_ns=T0 + n * SECOND, sides=("inbound",), duration_us=(n + 1) * 100 + 100,
            status=503 if n in (3, 7) else 200, mtls=n != 5, request_bytes=10,
            response_bytes=100,
        )  # fmt: skip
        events += parts
    events[-1] = msgspec.structs.replace(events[-1], duration_us=1234)
    for n in range(3):
        parts, _, _ = hop(
            "frontend", "orders", trace_id=f"{n + 100:032x}", parent=None,
            time_ns=T0 + 20 * SECOND + n * SECOND, duration_us=2000,
        )  # fmt: skip
        events += parts if n != 1 else parts[::-1]  # inbound first once
    parts, _, _ = hop(
        "orders", "payments", trace_id=f"{200:032x}", parent=None, time_ns=T0 + 30 * SECOND,
        sides=("outbound",), status=503, decision=None,
    )  # fmt: skip
    events += parts
    for n in range(4):
        parts, _, _ = hop(
            "batch-report", "payments", trace_id=f"{n + 300:032x}", parent=None,
            time_ns=T0 + 40 * SECOND + n * SECOND, status=403, decision="deny",
            duration_us=300,
        )  # fmt: skip
        events += parts
    return events


def rollup_of(ledger: Ledger, path: Path | None = None) -> Rollup:
    return Rollup(ledger.store, path)


def test_latency_buckets_keep_two_significant_digits() -> None:
    cases = {0: 0, 7: 7, 99: 99, 100: 100, 109: 100, 1234: 1200, 19_999: 19_000, 10**7 + 1: 10**7}
    assert {us: latency_bucket(us) for us in cases} == cases


def test_graph_figures_match_a_hand_computation(ledger: Ledger) -> None:
    ledger.log.append([entry_of(e) for e in hand_made()])
    rollup = rollup_of(ledger)
    result = graph.compute(rollup, since_ns=T0 + 1, until_ns=T0 + 60 * SECOND, now_ns=0)
    assert result.from_ns == T0 and result.to_ns == T0 + 60 * SECOND  # since rounds down
    edges = {(e.source, e.dest): e for e in result.edges}
    assert set(edges) == {
        ("frontend", "catalog"),
        ("frontend", "orders"),
        ("orders", "payments"),
        ("batch-report", "payments"),
    }
    catalog = edges[("frontend", "catalog")]
    # inbound durations: 100..1000 minus nothing (inbound-only helper subtracts 100 from
    # 200..1100), i.e. 100, 200, …, 900 and the last replaced by 1234 → bucket 1200.
    # nearest rank: p50 = 5th of 10 = 500; p95 = ⌈9.5⌉ = 10th = 1200; p99 = 10th = 1200.
    assert (catalog.requests, catalog.failed, catalog.denied) == (10, 2, 0)
    assert (catalog.p50_us, catalog.p95_us, catalog.p99_us) == (500, 1200, 1200)
    assert (catalog.mtls, catalog.plaintext, catalog.mtls_share) == (9, 1, 0.9)
    assert (catalog.request_bytes, catalog.response_bytes) == (100, 1000)
    assert catalog.error_rate == 0.2
    assert catalog.rate_per_s == pytest.approx(10 / 60)
    orders = edges[("frontend", "orders")]
    assert orders.requests == 3  # six events, three calls: the inbound side counted
    assert orders.p50_us == 1900  # the inbound side's 1900 µs
    lone = edges[("orders", "payments")]
    assert (lone.requests, lone.failed, lone.p50_us) == (1, 1, 1000)
    denied = edges[("batch-report", "payments")]
    assert (denied.requests, denied.denied, denied.failed, denied.error_rate) == (4, 4, 0, 0)
    assert result.requests == 18


def test_pairing_does_not_depend_on_chunks_or_arrival_order(ledger: Ledger, tmp_path: Path) -> None:
    events = hand_made()
    ledger.log.append([entry_of(e) for e in events])
    expected = graph.compute(rollup_of(ledger), since_ns=None, until_ns=None, now_ns=0).edges
    for chunk in (1, 2, 3, 7):
        rollup = rollup_of(ledger)
        while rollup.catch_up(chunk=chunk):
            pass
        got = graph.compute(rollup, since_ns=None, until_ns=None, now_ns=0)
        assert got.edges == expected, chunk
    other = open_ledger(tmp_path / "reversed", origin="test/reversed")
    try:
        other.log.append([entry_of(e) for e in reversed(events)])
        got = graph.compute(rollup_of(other), since_ns=None, until_ns=None, now_ns=0)
    finally:
        other.close()
    assert got.edges == expected


def as_call(index: int, event: AuditEvent) -> Call:
    source, dest, trace = event.source, event.destination, event.trace
    assert source is not None and dest is not None and trace is not None
    span = trace.span_id if event.direction == "outbound" else trace.parent_span_id
    return Call(
        index, int(event.time_ns), event.direction, span, trace.trace_id,
        source.namespace or "", source.service or "", dest.namespace or "", dest.service or "",
        event.duration_us, False, False, True, 0, 0,
    )  # fmt: skip


def test_fold_takes_back_an_outbound_call_when_its_inbound_side_arrives() -> None:
    parts, _, _ = hop("a", "b", trace_id="1" * 32, parent=None, time_ns=T0)
    outbound, inbound = (as_call(i, e) for i, e in enumerate(parts))
    assert [row[0] for row in fold([outbound]).values()] == [1]
    second = fold([inbound], earlier=[outbound])
    assert sorted(row[0] for row in second.values()) == [-1, 1]  # outbound out, inbound in
    assert [row[0] for row in fold([inbound]).values()] == [1]  # no history: nothing back
    assert [row[0] for row in fold([outbound], earlier=[inbound]).values()] == []
    assert fold([outbound, inbound]) == {as_call(1, parts[1]).key(): [1, 0, 0, 1, 0, 0]}


def test_the_rollup_file_resumes_and_starts_over_for_another_ledger(tmp_path: Path) -> None:
    events = generate(300, seed=9)
    first = open_ledger(tmp_path / "a", origin="test/a")
    try:
        first.log.append([entry_of(e) for e in events[:200]])
        path = tmp_path / "a" / ROLLUP_DB
        assert rollup_of(first, path).catch_up() == 200
        first.log.append([entry_of(e) for e in events[200:]])
        again = rollup_of(first, path)
        assert again.catch_up() == 100  # resumed, not redone
        assert again.upto == 300
        whole = graph.compute(again, since_ns=None, until_ns=None, now_ns=0)
    finally:
        first.close()
    assert whole.requests == 300
    second = open_ledger(tmp_path / "b", origin="test/b")
    try:
        second.log.append([entry_of(e) for e in events[:250]])
        shared = rollup_of(second, path)  # the file of ledger a, handed to ledger b
        assert shared.catch_up() == 250
        assert graph.compute(shared, since_ns=None, until_ns=None, now_ns=0).requests == 250
    finally:
        second.close()


def test_the_window_is_whole_minutes(ledger: Ledger) -> None:
    ledger.log.append([entry_of(e) for e in hand_made()])
    rollup = rollup_of(ledger)
    late = graph.compute(rollup, since_ns=T0 + 30 * SECOND, until_ns=None, now_ns=T0 + MINUTE_NS)
    assert late.requests == 18 and late.seconds == 60  # the whole first minute
    # regression: an --until inside a minute counted the whole minute but reported (and
    # divided rates by) the shorter window
    cut = graph.compute(rollup, since_ns=T0, until_ns=T0 + 15 * SECOND, now_ns=T0 + MINUTE_NS)
    assert cut.requests == 18 and (cut.from_ns, cut.to_ns) == (T0, T0 + MINUTE_NS)
    after = graph.compute(rollup, since_ns=T0 + MINUTE_NS, until_ns=None, now_ns=T0 + 2 * MINUTE_NS)
    assert after.edges == ()
    everything = graph.compute(rollup, since_ns=None, until_ns=None, now_ns=0)
    assert (everything.from_ns, everything.to_ns) == (T0, T0 + MINUTE_NS)


class HookAfterRows:
    """A rollup's SQLite connection that runs `hook` once, before the first statement after
    the one reading the graph's rows (its `sum(failed)`): between the rows and the rest."""

    def __init__(self, db: sqlite3.Connection, hook: Callable[[], object]) -> None:
        self._db = db
        self._hook: Callable[[], object] | None = hook
        self._rows_read = False

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        if self._rows_read and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
        cursor = self._db.execute(sql, *params)
        self._rows_read |= "sum(failed)" in sql
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_the_graph_reads_one_state_of_the_rollup(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `compute` read the rows, then the spans and the extent, each on its own;
    a catch-up committed between them (the server's keeper, or another process's on the same
    DATA/rollup.db) gave an edge its old calls with its new span, so a wrong active rate."""
    ledger.log.append([entry_of(e) for e in hand_made()])
    path = tmp_path / ROLLUP_DB
    rollup = rollup_of(ledger, path)
    before = graph.compute(rollup, since_ns=None, until_ns=None, now_ns=0)
    late, _, _ = hop(
        "frontend", "catalog", trace_id=f"{998:032x}", parent=None,
        time_ns=T0 + 10 * MINUTE_NS, sides=("inbound",),
    )  # fmt: skip
    other = rollup_of(ledger, path)  # another reader of the file, catching up on its own

    def append_and_catch_up() -> None:
        ledger.log.append([entry_of(e) for e in late])
        assert other.catch_up() == 1

    monkeypatch.setattr(rollup, "_db", HookAfterRows(rollup._db, append_and_catch_up))
    during = graph.compute(rollup, since_ns=None, until_ns=None, now_ns=0)
    assert during == before  # the state the read began in, all of it
    after = graph.compute(rollup, since_ns=None, until_ns=None, now_ns=0)
    catalog = next(e for e in after.edges if e.dest == "catalog")
    assert (catalog.requests, catalog.active_to_ns, after.to_ns) == (
        11,
        T0 + 11 * MINUTE_NS,
        T0 + 11 * MINUTE_NS,
    )
    other.close()


def test_rates_are_over_the_span_that_had_traffic(ledger: Ledger) -> None:
    """Regression: an hour's window holding a minute of traffic showed rates 60 times too low
    (the calls over the whole window). `rate_per_s` stays the window's average; the active
    rate divides by the minutes from the edge's first call to its last."""
    late = hop(
        "frontend", "catalog", trace_id=f"{999:032x}", parent=None,
        time_ns=T0 + 3 * MINUTE_NS + 5 * SECOND, sides=("inbound",),
    )[0]  # fmt: skip
    ledger.log.append([entry_of(e) for e in [*hand_made(), *late]])
    rollup = rollup_of(ledger)
    hour = graph.compute(rollup, since_ns=T0, until_ns=T0 + 60 * MINUTE_NS, now_ns=0)
    edges = {(e.source, e.dest): e for e in hour.edges}
    denied = edges[("batch-report", "payments")]  # 4 calls, all in the first minute
    assert denied.rate_per_s == pytest.approx(4 / 3600)
    assert (denied.active_from_ns, denied.active_to_ns) == (T0, T0 + MINUTE_NS)
    assert denied.active_seconds == 60 and denied.active_rate_per_s == pytest.approx(4 / 60)
    catalog = edges[("frontend", "catalog")]  # minutes 0 and 3: the span holds the gap
    assert (catalog.active_from_ns, catalog.active_to_ns) == (T0, T0 + 4 * MINUTE_NS)
    assert catalog.active_rate_per_s == pytest.approx(11 / 240)
    # a window still open: its last minute, still running, counts whole (not up to now)
    open_ = graph.compute(
        rollup, since_ns=T0, until_ns=None, now_ns=T0 + 3 * MINUTE_NS + 30 * SECOND
    )
    catalog = next(e for e in open_.edges if e.dest == "catalog")
    assert open_.to_ns == T0 + 3 * MINUTE_NS + 30 * SECOND
    assert catalog.active_to_ns == T0 + 4 * MINUTE_NS
    assert catalog.active_rate_per_s == pytest.approx(11 / 240)
    # the JSON says both, and reads back
    hour_json = graph.to_json(hour)
    [body] = [e for e in hour_json["edges"] if e["dest"] == "payments" and e["denials"]]
    assert (body["rate_per_s"], body["active_rate_per_s"], body["active_seconds"]) == (
        0.001,
        0.067,
        60,
    )
    spans = [(e.active_from_ns, e.active_to_ns) for e in hour.edges]
    assert [(e.active_from_ns, e.active_to_ns) for e in graph.from_json(hour_json).edges] == spans


DOT_EDGE = re.compile(
    r'^  "(?P<src>[^"]+)" -> "(?P<dst>[^"]+)" \[label="(?P<label>[^"]*)", '
    r'color="(?P<casing>#6b2fa3:)?(?P<color>#[0-9a-f]{6})(?(casing):#6b2fa3)", '
    r"penwidth=(?P<pen>[0-9.]+)(?P<dashed>, style=dashed)?"
    r'(?P<denied>, fontcolor="#6b2fa3")?\];$'
)


def test_dot_output_has_the_documented_structure(ledger: Ledger) -> None:
    ledger.log.append([entry_of(e) for e in hand_made()])
    result = graph.compute(rollup_of(ledger), since_ns=None, until_ns=None, now_ns=0)
    text = graph.to_dot(result)
    lines = text.splitlines()
    assert lines[0] == "digraph auditmesh {" and lines[-1] == "}"
    assert text.count("{") == text.count("}") == 1
    edges = {}
    for line in lines[1:-1]:
        match = DOT_EDGE.match(line)
        if match:
            edges[(match["src"], match["dst"])] = match
        else:
            assert re.match(r'^  ("[^"]+"|rankdir=LR|(graph|node|edge) \[.*\]);$', line), line
    assert len(edges) == 4
    catalog = edges[("frontend", "catalog")]
    assert catalog["dashed"] and not catalog["denied"] and not catalog["casing"]  # plaintext
    assert catalog["color"] == graph.error_colour(0.2) == "#c62828"
    assert "10 req, 10.0/min while active" in catalog["label"] and "p95 1.2 ms" in catalog["label"]
    denied = edges[("batch-report", "payments")]
    assert denied["denied"] and "4 denied" in denied["label"] and not denied["dashed"]
    assert denied["casing"] and denied["color"] == "#2f9e6b"  # denials are not errors
    assert graph.DENIAL_COLOUR not in {colour for _, colour in graph.ERROR_COLOURS}
    pens = {key: float(m["pen"]) for key, m in edges.items()}
    assert pens[("frontend", "catalog")] == 5.0 == max(pens.values())
    assert pens[("orders", "payments")] < pens[("frontend", "orders")]
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
        assert svg.returncode == 0, svg.stderr


def test_json_lists_nodes_and_edges(ledger: Ledger) -> None:
    ledger.log.append([entry_of(e) for e in hand_made()])
    body = graph.to_json(graph.compute(rollup_of(ledger), since_ns=None, until_ns=None, now_ns=0))
    assert [n["name"] for n in body["nodes"]] == [
        "batch-report",
        "catalog",
        "frontend",
        "orders",
        "payments",
    ]
    first = body["edges"][0]
    assert (first["source"], first["dest"], first["requests"], first["error_rate"]) == (
        "frontend",
        "catalog",
        10,
        0.2,
    )
    assert first["bytes"] == 1100 and first["plaintext"] == 1
    frontend = next(n for n in body["nodes"] if n["name"] == "frontend")
    assert (frontend["outbound"], frontend["inbound"]) == (13, 0)
    assert body["requests"] == 18 and body["window"]["seconds"] == 60


def test_names_are_qualified_by_namespace_except_spiffe_ids() -> None:
    def edge(source: str, source_ns: str, dest: str, dest_ns: str) -> graph.Edge:
        return graph.Edge(source, source_ns, dest, dest_ns, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0.0)

    web = "spiffe://cluster.local/ns/shop/sa/web"
    names = graph.node_names(
        graph.Graph(
            0, 60 * SECOND, (edge(web, "shop", "api", "bank"), edge("api", "bank", "db", ""))
        )
    )
    assert names == {("shop", web): web, ("bank", "api"): "api.bank", ("", "db"): "db"}


def test_the_sql_fold_agrees_with_the_pure_specification(tmp_path: Path) -> None:
    """`Rollup` computes `fold`'s rule in SQL; on calls reported by one side, both sides in
    either order, and sides split across chunks, the two give the same rollup."""
    import random

    rng = random.Random(3)
    parts = [hand_made(), [e for p in checkout().values() for e in p], generate(150, seed=2)]
    pairs: list[AuditEvent] = []
    for n in range(60):
        sides, _, _ = hop(
            "frontend", "orders", trace_id=f"{n + 500:032x}", parent=None,
            time_ns=T0 + n * SECOND, duration_us=rng.randrange(50, 5000),
            status=rng.choice((200, 200, 503)),
        )  # fmt: skip
        pairs += sides if rng.random() < 0.5 else sides[::-1]
    events = [e for part in parts for e in part] + pairs
    rng.shuffle(events)  # the two sides of a hop land far apart, in either order
    ledger = open_ledger(tmp_path / "data", origin="test/spec")
    try:
        ledger.log.append([entry_of(e) for e in events])
        calls = [
            Call.of(row)
            for row in ledger.store.query(
                f"SELECT {CALL_COLUMNS} FROM events WHERE {CALLS} ORDER BY idx"
            )
        ]
        want = {key: row for key, row in fold(calls).items() if any(row)}
        for chunk in (1, 5, 64, 10_000):
            rollup = rollup_of(ledger)
            rollup.catch_up(chunk=chunk)
            got = {
                tuple(row[:6]): list(row[6:])
                for row in rollup._db.execute(
                    "SELECT * FROM edge_minutes WHERE calls != 0 OR failed != 0"
                ).fetchall()
            }
            assert got == want, chunk
    finally:
        ledger.close()


def test_two_nodes_never_share_a_name() -> None:
    """Regression: names were unique only in the common case. With one namespace in view a
    service of it and a service of that name in no namespace were both `db`, as were the
    unknown callers of `shop` and of nowhere; with several namespaces a service named `a.b`
    and the service `a` of the namespace `b` were both `a.b`; a SPIFFE ID reported in two
    namespaces was two nodes of one name. Each table row, DOT node and JSON node then stood
    for two nodes (JSON added up their calls under the one name)."""

    def edge(source: str, source_ns: str, dest: str, dest_ns: str) -> graph.Edge:
        return graph.Edge(source, source_ns, dest, dest_ns, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0.0)

    web = "spiffe://cluster.local/ns/shop/sa/web"
    cases = {
        "one namespace": (
            [edge("web", "", "db", ""), edge("web", "shop", "db", "shop")],
            {("", "web"): "web", ("shop", "web"): "web.shop", ("", "db"): "db"},
        ),
        "unknown callers": (
            [edge("unknown", "", "api", "shop"), edge("unknown", "shop", "api", "shop")],
            {("", "unknown"): "unknown", ("shop", "unknown"): "unknown.shop"},
        ),
        "a dotted service": (
            [edge("a.b", "", "x", "c"), edge("a", "b", "x", "c")],
            {("", "a.b"): "a.b (no namespace)", ("b", "a"): "a (namespace b)", ("c", "x"): "x.c"},
        ),
        "one SPIFFE ID in two namespaces": (
            [edge(web, "shop", "api", "shop"), edge(web, "", "api", "shop")],
            {("shop", web): f"{web} (namespace shop)", ("", web): f"{web} (no namespace)"},
        ),
    }
    for case, (edges, expected) in cases.items():
        result = graph.Graph(0, 60 * SECOND, tuple(edges))
        names = graph.node_names(result)
        assert len(set(names.values())) == len(names), (case, names)
        assert {node: names[node] for node in expected} == expected, case
        body = graph.to_json(result)
        assert len(body["nodes"]) == len(names), case
        assert sum(n["outbound"] for n in body["nodes"]) == len(edges)
        assert all(n["outbound"] + n["inbound"] <= 2 for n in body["nodes"]), case
        dot_nodes = [line for line in graph.to_dot(result).splitlines() if line.endswith('";')]
        assert len(dot_nodes) == len(set(dot_nodes)) == len(names), case
    # the common case keeps its short names
    common = graph.node_names(
        graph.Graph(0, 1, (edge("web", "shop", "db", "shop"), edge(web, "shop", "db", "shop")))
    )
    assert common == {("shop", "web"): "web", ("shop", "db"): "db", ("shop", web): web}
