"""The questions' benchmarks (issue 6): filtered query latency and the service graph, at 1M and
10M stored events.

Run alone: `.venv/bin/python -m bench.query_bench [--quick] [--sizes 1M,10M]`; `main(argv)`
returns an exit code, `section(quick)` returns the `Figure`s for `bench.run`'s table.

**The ledgers here are synthetic, built with SQL, not through the log.** Appending 10M events
through `Log.append` takes hours on a 2-core machine (~11k events/s), so each ledger is a
`SQLiteStore` (the real schema, migrations applied, the real indexes) whose `events` rows are
inserted by one `INSERT … SELECT` per million rows from a pool of real events: 20,000 events of
`TrafficGenerator`'s shop mesh, a third of their calls also reported by the caller's side (an
outbound twin sharing the trace and hop, as sidecars write them), plus a few audit reads.
Row i copies pool row i mod 20,000 with its own index, a unique id (16 ASCII hex bytes), a time
2 ms after the previous row, and a trace id and hop made unique per copy of the pool; `data`
is the pool event's canonical JSON, so the page a query returns is real event JSON, though it
does not repeat the row's id and time. There are no tiles and no checkpoints: nothing here
verifies, it only reads.

Figures:
- filtered query: `analysis.query.run` (SQL, fetch, the next cursor) for one page of 100 events,
  over common filters (source, dest, either-side service, path exact and prefix, status and
  status class, decision, kind, trace, time window, combinations, and the 10th page of a
  cursor walk); p50/p95 over all of them, and the slowest filter's p95. Peer: one page of 100
  rows by index range (`idx >= ?`), the cheapest read of a page there is. Target: p95 < 100 ms
  at 10M.
- graph: `analysis.graph.compute` over every stored event, with the rollup up to date, and over
  the last 15 minutes. Peer: one `GROUP BY source, destination` count over the events table,
  the naive way (SQLite scans every row). Target: < 1 s at 1M. Building the rollup from
  nothing (what the first graph of an old ledger costs, or deleting DATA/rollup.db) is
  reported as events per second.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from auditmesh.analysis import graph
from auditmesh.analysis.query import Cursor, Query, run
from auditmesh.analysis.rollup import MINUTE_NS, ROLLUP_DB, Rollup
from auditmesh.collector import entry_of
from auditmesh.events import AuditEvent, Trace, new_event_id
from auditmesh.store.sqlite import SQLiteStore
from bench.common import START_NS, Figure, Target, fmt, generate_events, percentile, progress

POOL = 20_000
STEP_NS = 2_000_000  # one event every 2 ms: 1M events span 33 minutes, 10M 5.6 hours
QUERY_TARGET = Target("p95 < 100 ms at 10M", 100.0, higher_is_better=False)
GRAPH_TARGET = Target("< 1 s at 1M", 1000.0, higher_is_better=False)
COLUMNS = (
    "time_ns, kind, source_id, source_service, dest_id, dest_service, status, decision,"
    " trace_id, outcome, direction, path, source_ns, dest_ns, duration_us, request_bytes,"
    " response_bytes, mtls, hop"
)


def count(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


# -- the synthetic ledger --------------------------------------------------------------


def pool_events(size: int = POOL, seed: int = 17) -> list[AuditEvent]:
    """Real events: the shop mesh's inbound reports, a third with their outbound twin."""
    rng = random.Random(seed)
    inbound = generate_events(size * 3 // 4, seed=seed)
    events: list[AuditEvent] = []
    for event in inbound:
        assert event.trace is not None
        if rng.random() < 1 / 3 and len(events) < size - 1:
            span = rng.randbytes(8).hex()
            twin = msgspec.structs.replace(
                event,
                id=new_event_id(),
                direction="outbound",
                reporter=event.source.identity if event.source and event.source.identity else "x",
                duration_us=event.duration_us + 150,
                trace=Trace(trace_id=event.trace.trace_id, span_id=span),
            )
            event = msgspec.structs.replace(
                event, trace=Trace(trace_id=event.trace.trace_id, span_id=rng.randbytes(8).hex(),
                                   parent_span_id=span)
            )  # fmt: skip
            events += [twin, event]
        else:
            events.append(event)
        if len(events) >= size - 20:
            break
    while len(events) < size:  # a few audit reads, for the kind filter
        events.append(
            msgspec.structs.replace(events[len(events) % 100], kind="audit_read", direction=None)
        )
    return events[:size]


def build_ledger(directory: Path, total: int, pool: Sequence[AuditEvent]) -> SQLiteStore:
    """A `SQLiteStore` with `total` synthetic rows (see the module docstring)."""
    SQLiteStore(directory).close()  # the real schema, every migration applied
    db = sqlite3.connect(directory / "ledger.db", isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    db.execute(f"CREATE TEMP TABLE pool (n INTEGER PRIMARY KEY, {COLUMNS}, data BLOB)")
    db.executemany(
        f"INSERT INTO pool VALUES (?, {', '.join('?' * 19)}, ?)",
        (
            (n, *entry_of(e).columns, entry_of(e).data)
            for n, e in enumerate(pool)  # columns_of: the store's own derivation
        ),
    )
    size = len(pool)
    started = time.monotonic()
    done = 0
    while done < total:
        db.execute("BEGIN")
        for _ in range(50):  # a million rows per transaction, one pool copy per statement
            count = min(size, total - done)
            db.execute(
                f"""
                INSERT INTO events (idx, id, {COLUMNS}, data)
                SELECT :base + n, CAST(printf('%016x', :base + n) AS BLOB),
                    :start + (:base + n) * :step, kind, source_id, source_service, dest_id,
                    dest_service, status, decision, printf('%08x', :copy) || substr(trace_id, 9),
                    outcome, direction, path, source_ns, dest_ns, duration_us, request_bytes,
                    response_bytes, mtls,
                    CASE WHEN hop IS NULL THEN NULL ELSE printf('%08x', :copy) || substr(hop, 9)
                    END, data
                FROM pool WHERE n < :count ORDER BY n
                """,
                {
                    "base": done,
                    "start": START_NS,
                    "step": STEP_NS,
                    "copy": done // size,
                    "count": count,
                },
            )
            done += count
            if done >= total:
                break
        db.execute("COMMIT")
        rate = done / max(time.monotonic() - started, 1e-9)
        progress(f"built {done:,}/{total:,} synthetic rows ({rate:,.0f} rows/s)")
    db.close()
    return SQLiteStore(directory, create=False)


# -- filtered queries ------------------------------------------------------------------


def _window(rng: random.Random, total: int, minutes: int) -> tuple[int, int]:
    end = START_NS + rng.randrange(total) * STEP_NS
    return end - minutes * MINUTE_NS, end


def cases(rng: random.Random, total: int, trace_id: str) -> list[tuple[str, Query]]:
    """The filters measured, with fresh time windows each round."""
    since15, until15 = _window(rng, total, 15)
    since60, until60 = _window(rng, total, 60)
    orders = "spiffe://cluster.local/ns/shop/sa/orders"
    return [
        ("source=frontend", Query(source="frontend")),
        ("source=<SPIFFE ID>", Query(source=orders)),
        ("dest=payments", Query(dest="payments")),
        ("service=orders (either side)", Query(service="orders")),
        ("path=/charges", Query(path="/charges")),
        ("path=/orders*", Query(path="/orders*")),
        ("status=404", Query(status="404")),
        ("status=5xx", Query(status="5xx")),
        ("decision=deny", Query(decision="deny")),
        ("kind=audit_read", Query(kind="audit_read")),
        ("trace=<id>", Query(trace_id=trace_id)),
        ("last 15 min window", Query(since_ns=since15, until_ns=until15)),
        ("dest=payments & status=5xx", Query(dest="payments", status="5xx")),
        ("source=batch-report & decision=deny", Query(source="batch-report", decision="deny")),
        ("dest=catalog & 1 h window", Query(dest="catalog", since_ns=since60, until_ns=until60)),
    ]


def _trace_ids(store: SQLiteStore, rng: random.Random, total: int, k: int) -> list[str]:
    ids = []
    for _ in range(k):
        row = store.query("SELECT trace_id FROM events WHERE idx = ?", (rng.randrange(total),))
        if row and row[0][0]:
            ids.append(str(row[0][0]))
    return ids or ["0" * 32]


def query_latencies(
    store: SQLiteStore, total: int, repeats: int, seed: int = 5
) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """Milliseconds per page: all cases together, per case, and the peer's."""
    rng = random.Random(seed)
    traces = _trace_ids(store, rng, total, repeats)
    per_case: dict[str, list[float]] = {}
    clock = time.perf_counter
    for n in range(repeats):
        for label, query in cases(rng, total, traces[n % len(traces)]):
            t0 = clock()
            page = run(store, query)
            per_case.setdefault(label, []).append((clock() - t0) * 1000)
            assert len(page.rows) <= 100
    # a cursor walk: the 10th page of dest=catalog, from the cursor the 9th page gave
    walk = []
    query = Query(dest="catalog")
    for _ in range(max(3, repeats // 5)):
        cursor = None
        start = rng.randrange(total)
        first = store.query("SELECT time_ns FROM events WHERE idx = ?", (start,))[0][0]
        cursor = Cursor(int(first), start, query.fingerprint()).encode()
        for _page in range(9):
            cursor = run(store, query, cursor).next
        t0 = clock()
        run(store, query, cursor)
        walk.append((clock() - t0) * 1000)
    per_case["dest=catalog, 10th page by cursor"] = walk
    peer = []
    for _ in range(repeats * 3):
        start = rng.randrange(max(1, total - 100))
        t0 = clock()
        store.query("SELECT idx, time_ns, data FROM events WHERE idx >= ? LIMIT 100", (start,))
        peer.append((clock() - t0) * 1000)
    everything = sorted(t for times in per_case.values() for t in times)
    return everything, per_case, sorted(peer)


# -- the graph -------------------------------------------------------------------------


def graph_figures(
    store: SQLiteStore, directory: Path, total: int, repeats: int
) -> dict[str, float]:
    rollup_path = directory / ROLLUP_DB
    rollup_path.unlink(missing_ok=True)
    rollup = Rollup(store, rollup_path)
    t0 = time.perf_counter()
    folded = rollup.catch_up()
    build_s = time.perf_counter() - t0
    assert folded == total
    now = START_NS + total * STEP_NS
    whole, recent = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = graph.compute(rollup, since_ns=None, until_ns=None, now_ns=now)
        whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        graph.compute(rollup, since_ns=now - 15 * MINUTE_NS, until_ns=None, now_ns=now)
        recent.append(time.perf_counter() - t0)
    calls = result.requests
    t0 = time.perf_counter()
    store.query(
        "SELECT source_service, dest_service, count(*) FROM events"
        " WHERE kind IN ('http', 'tcp') GROUP BY source_service, dest_service"
    )
    naive = time.perf_counter() - t0
    (rows,) = rollup._db.execute("SELECT count(*) FROM edge_minutes").fetchone()
    rollup.close()
    return {
        "build_s": build_s,
        "whole_ms": sorted(whole)[len(whole) // 2] * 1000,
        "recent_ms": sorted(recent)[len(recent) // 2] * 1000,
        "naive_ms": naive * 1000,
        "calls": calls,
        "rollup_rows": rows,
    }


# -- the section -----------------------------------------------------------------------


def measure(sizes: Sequence[int], repeats: int, graph_repeats: int, work: Path) -> list[Figure]:
    figures: list[Figure] = []
    pool = pool_events()
    for total in sizes:
        label = f"{total // 1_000_000}M" if total >= 1_000_000 else f"{total // 1000}k"
        directory = work / f"ledger-{label}"
        directory.mkdir(parents=True, exist_ok=True)
        progress(f"building a synthetic ledger of {total:,} events")
        t0 = time.monotonic()
        store = build_ledger(directory, total, pool)
        progress(f"built in {time.monotonic() - t0:.0f} s; querying")
        everything, per_case, peer = query_latencies(store, total, repeats)
        p50, p95 = percentile(everything, 50), percentile(everything, 95)
        peer_p50 = percentile(peer, 50)
        target = QUERY_TARGET if total >= 10_000_000 else None
        print(f"\n  filtered query, {label} events, one page of 100 (ms, {repeats} runs each):")
        for name, times in per_case.items():
            times.sort()
            p50_case, p95_case = percentile(times, 50), percentile(times, 95)
            print(f"    {name:<40} p50 {p50_case:8.2f}   p95 {p95_case:8.2f}")
        print(f"    {'peer: 100 rows by index range':<40} p50 {peer_p50:8.2f}")
        slowest = max(per_case, key=lambda k: percentile(per_case[k], 95))
        figures += [
            Figure("query", f"filtered query p50, {label} events", p50, "ms", "page by idx",
                   peer_p50),
            Figure("query", f"filtered query p95, {label} events", p95, "ms", "page by idx",
                   percentile(peer, 95), target),
            Figure("query", f"slowest filter p95 ({slowest}), {label}",
                   percentile(sorted(per_case[slowest]), 95), "ms"),
        ]  # fmt: skip
        progress(f"graph over {label} events")
        g = graph_figures(store, directory, total, graph_repeats)
        print(
            f"\n  graph, {label} events ({g['calls']:,.0f} calls, {g['rollup_rows']:,.0f} rollup "
            f"rows): whole ledger {g['whole_ms']:.1f} ms, last 15 min {g['recent_ms']:.1f} ms; "
            f"naive GROUP BY over the events table {g['naive_ms']:.0f} ms; building the rollup "
            f"from nothing {g['build_s']:.1f} s ({total / g['build_s']:,.0f} events/s)"
        )
        figures += [
            Figure("graph", f"graph of all {label} events, rollup current", g["whole_ms"], "ms",
                   "GROUP BY scan", g["naive_ms"], GRAPH_TARGET if total == 1_000_000 else None),
            Figure("graph", f"graph of the last 15 min, {label}", g["recent_ms"], "ms"),
            Figure("graph", f"rollup built from nothing, {label}", total / g["build_s"], "ev/s"),
        ]  # fmt: skip
        store.close()
    return figures


def section(quick: bool) -> list[Figure]:
    """For `bench.run`: the figures, printed as they come."""
    print("\n== Questions: filtered query and service graph (bench/query_bench.py) ==", flush=True)
    sizes = (100_000,) if quick else (1_000_000, 10_000_000)
    with tempfile.TemporaryDirectory(prefix="auditmesh-query-bench-") as tmp:
        return measure(sizes, 10 if quick else 40, 3 if quick else 10, Path(tmp))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100k events, a smoke test")
    parser.add_argument(
        "--sizes", help="comma-separated ledger sizes (default 1M,10M; --quick: 100k)"
    )
    parser.add_argument("--repeats", type=int, help="runs per filter (default 40; quick 10)")
    parser.add_argument("--dir", type=Path, help="build the ledgers here (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = (
        tuple(count(s) for s in args.sizes.split(","))
        if args.sizes
        else ((100_000,) if args.quick else (1_000_000, 10_000_000))
    )
    repeats = args.repeats or (10 if args.quick else 40)
    with tempfile.TemporaryDirectory(prefix="auditmesh-query-bench-", dir=args.dir) as tmp:
        figures = measure(sizes, repeats, 3 if args.quick else 10, Path(tmp))
    print("\nsummary:")
    for f in figures:
        peer = (
            "" if f.peer_value is None else f"  (peer {f.peer_label}: {fmt(f.peer_value, f.unit)})"
        )
        target = "" if f.target is None else f"  [{f.target.text}: {f.target.status(f.value)}]"
        print(f"  {f.label:<58} {fmt(f.value, f.unit):>14}{peer}{target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
