"""What each query index costs the append, on an empty ledger or on one already filled.

Not part of `make bench` (a 1M-row base takes half a minute to build): run it alone, e.g.

    .venv/bin/python -m bench.sqlite_index_cost --base 1000000
    .venv/bin/python -m bench.sqlite_index_cost --base 1000000 --drop events_trace
    .venv/bin/python -m bench.sqlite_index_cost --base 0 --events 100000 --page-size 16384

It builds the store's real schema (`store/sqlite.py`'s migrations, WAL, `synchronous=FULL`),
inserts `--base` rows in one transaction, then times `--events` more in transactions of
`--batch`, as the sequencer commits them. Rows are the simulated mesh's index columns and
canonical bytes, with UUIDv7-like ids (time first) and random trace ids, as real traffic has.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from auditmesh.collector import entry_of
from auditmesh.store.sqlite import INDEX_COLUMNS, MIGRATIONS
from bench.common import generate_events, progress

_INSERT = (
    f"INSERT INTO events (idx, id, {', '.join(INDEX_COLUMNS)}, data)"
    f" VALUES ({', '.join('?' * (len(INDEX_COLUMNS) + 3))})"
)
_TRACE_COLUMN = INDEX_COLUMNS.index("trace_id")
_TIME_COLUMN = INDEX_COLUMNS.index("time_ns")


def _schema(path: Path, page_size: int, drop: list[str]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for migration in MIGRATIONS:
        for statement in migration.split(";"):
            if statement.strip() and not statement.strip().startswith("UPDATE"):
                db.execute(statement)  # the backfill UPDATE has nothing to do on no rows
    for index in drop:
        db.execute(f"DROP INDEX {index}")
    return db


def _rows(
    start: int, count: int, templates: list[tuple[object, ...]], data: list[bytes]
) -> Iterator[tuple[object, ...]]:
    base_ns = time.time_ns()
    for i in range(start, start + count):
        columns = list(templates[i % len(templates)])
        columns[_TIME_COLUMN] = base_ns + i * 1_000
        if columns[_TRACE_COLUMN] is not None:
            columns[_TRACE_COLUMN] = os.urandom(16).hex()
        key = (base_ns // 1_000_000 + i // 100).to_bytes(6, "big") + os.urandom(10)
        yield (i, key, *columns, data[i % len(data)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=1_000_000, help="rows already stored")
    parser.add_argument("--events", type=int, default=30_000, help="rows timed after them")
    parser.add_argument("--batch", type=int, default=1_000, help="rows per transaction")
    parser.add_argument("--page-size", type=int, default=4096, help="SQLite page size")
    parser.add_argument("--drop", default="", help="indexes to drop, comma-separated")
    parser.add_argument("--cache-mib", type=int, help="PRAGMA cache_size (default SQLite's 2)")
    args = parser.parse_args()
    drop = [name for name in args.drop.split(",") if name]
    entries = [entry_of(e) for e in generate_events(20_000)]
    templates = [e.columns for e in entries]
    data = [e.data for e in entries]
    with tempfile.TemporaryDirectory(prefix="auditmesh-index-cost-") as work:
        db = _schema(Path(work) / "ledger.db", args.page_size, drop)
        if args.cache_mib is not None:
            db.execute(f"PRAGMA cache_size=-{args.cache_mib * 1024}")
        progress(f"inserting {args.base:,} base rows")
        db.execute("BEGIN")
        db.executemany(_INSERT, _rows(0, args.base, templates, data))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(args.base, args.base + args.events, args.batch):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_INSERT, _rows(start, args.batch, templates, data))
            db.execute("COMMIT")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        db.close()
    print(
        f"page size {args.page_size}, cache {args.cache_mib or 2} MiB, base {args.base:,} rows, "
        f"dropped {drop or 'none'}: "
        f"{wall / args.events * 1e6:.1f} µs an event ({cpu / args.events * 1e6:.1f} µs CPU), "
        f"{args.events / wall:,.0f} events/s in transactions of {args.batch:,}"
    )


if __name__ == "__main__":
    main()
