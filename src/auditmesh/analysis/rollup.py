"""The service graph's rollup: calls per minute, per edge and per latency bucket, in DATA/rollup.db.

Place in the house: analysis/, under `graph.py`. A full scan of a million events costs SQLite
seconds on a small machine, so the graph does not read events; it reads this rollup, which is
brought up to date from the ledger in index order (`Rollup.catch_up`: the server does it in the
background after commits, the CLI before it answers). The ledger is append-only, so the rollup
is a pure function of the ledger's first `upto` entries; it stores `upto` and the id of entry
`upto - 1`, and starts over when they no longer match (another ledger, a restored copy). It is
derived and disposable: delete the file and the next graph rebuilds it. The ledger file is
never written. A data directory that cannot be written gets an in-memory rollup.

What a row holds, for calls (kind http or tcp) whose event time falls in one minute, from one
source (namespace, service) to one destination (namespace, service) with one latency bucket:
calls, failed (outcome failure, not counting policy denials), denied (decision deny), mutual-TLS
calls, request and response bytes (TCP: sent and received). The latency bucket is
`duration_us` truncated to two significant digits (`latency_bucket`), so a percentile read from
the rollup is the exact nearest-rank percentile truncated to two significant digits.

Each call is counted once (`fold`). When both sides report one hop, the sidecars' events share
the W3C span id the outbound side opened (the `hop` column: the outbound event's span id, the
inbound event's parent span id; proxy/tracing.py) within one trace. Events are folded in index
order: an inbound event always counts; an outbound event counts unless an inbound event of the
same hop came before it; and the first inbound event of a hop takes back the outbound events of
that hop counted before it. So the inbound side is preferred whichever side arrives first, and
an outbound event whose callee never reported (connection refused, no sidecar there) still
counts. Events without trace context cannot be paired and count as they are.

`fold` states that rule as a pure function over `Call`s; `Rollup` computes the same in SQL
(aggregating in SQLite is several times faster than Python and leaves the GIL to the server's
requests), and the tests check that both agree for any chunking and arrival order.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditmesh.analysis.query import SqlReader

MINUTE_NS = 60_000_000_000
ROLLUP_DB = "rollup.db"
CHUNK = 20_000
_VERSION = 1
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE edge_minutes (
    minute INTEGER NOT NULL,
    source_ns TEXT NOT NULL,
    source TEXT NOT NULL,
    dest_ns TEXT NOT NULL,
    dest TEXT NOT NULL,
    latency_us INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    denied INTEGER NOT NULL,
    mtls INTEGER NOT NULL,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    PRIMARY KEY (minute, source_ns, source, dest_ns, dest, latency_us)
) WITHOUT ROWID;
"""
_UPSERT = (
    "INSERT INTO edge_minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO UPDATE SET calls = calls + excluded.calls,"
    " failed = failed + excluded.failed, denied = denied + excluded.denied,"
    " mtls = mtls + excluded.mtls, request_bytes = request_bytes + excluded.request_bytes,"
    " response_bytes = response_bytes + excluded.response_bytes"
)
# The events table's columns (store/sqlite.py, schema 2) as a `Call`.
CALL_COLUMNS = (
    "idx, time_ns, direction, hop, trace_id, coalesce(source_ns, ''),"
    " coalesce(source_service, source_id, ''), coalesce(dest_ns, ''),"
    " coalesce(dest_service, dest_id, ''), duration_us,"
    " outcome = 'failure' AND decision IS NOT 'deny', decision IS 'deny', mtls,"
    " coalesce(request_bytes, 0), coalesce(response_bytes, 0)"
)
CALLS = "kind IN ('http', 'tcp')"

# `fold`'s rule in SQL, for the chunk of entries [:a, :b). Its net effect over a ledger prefix
# is: every inbound or unpairable call counts, and an outbound call counts while no inbound
# call of its hop precedes the prefix's end. So a chunk adds its calls that count at :b, and
# takes back the earlier outbound calls that counted at :a and whose first inbound partner is
# in the chunk. `fold` (pure) is the specification; tests check the two agree.
_KEY = (
    "time_ns / 60000000000, coalesce({t}source_ns, ''),"
    " coalesce({t}source_service, {t}source_id, ''), coalesce({t}dest_ns, ''),"
    " coalesce({t}dest_service, {t}dest_id, ''),"
    " CASE WHEN {t}duration_us < 100 THEN {t}duration_us ELSE {t}duration_us - {t}duration_us"
    " % CAST(substr('1000000000000000000', 1, length({t}duration_us) - 1) AS INTEGER) END"
)
_SUMS = (
    "count(*), sum({t}outcome = 'failure' AND {t}decision IS NOT 'deny'),"
    " sum({t}decision IS 'deny'), sum({t}mtls), sum(coalesce({t}request_bytes, 0)),"
    " sum(coalesce({t}response_bytes, 0))"
)
_PARTNER = (
    "SELECT 1 FROM events i WHERE i.trace_id = {t}trace_id AND i.hop = {t}hop"
    " AND i.direction = 'inbound' AND i.kind IN ('http', 'tcp') AND {where}"
)
_COUNTED = (
    f"SELECT {_KEY.format(t='e.')}, {_SUMS.format(t='e.')} FROM events e"
    f" WHERE e.idx >= :a AND e.idx < :b AND e.{CALLS} AND NOT ("
    " e.direction = 'outbound' AND e.hop IS NOT NULL AND e.trace_id IS NOT NULL"
    f" AND EXISTS ({_PARTNER.format(t='e.', where='i.idx < :b')}))"
    " GROUP BY 1, 2, 3, 4, 5, 6"
)
_TAKEN_BACK = (
    f"SELECT {_KEY.format(t='o.')}, {_SUMS.format(t='o.')} FROM events o"
    f" WHERE o.idx < :a AND o.{CALLS} AND o.direction = 'outbound' AND o.hop IS NOT NULL"
    " AND o.trace_id IN (SELECT trace_id FROM events WHERE idx >= :a AND idx < :b"
    " AND direction = 'inbound' AND hop IS NOT NULL)"
    f" AND EXISTS ({_PARTNER.format(t='o.', where='i.idx >= :a AND i.idx < :b')})"
    f" AND NOT EXISTS ({_PARTNER.format(t='o.', where='i.idx < :a')})"
    " GROUP BY 1, 2, 3, 4, 5, 6"
)
_HOPS = (
    "SELECT sum(direction = 'inbound'), sum(direction = 'outbound') FROM events"
    f" WHERE idx >= :a AND idx < :b AND {CALLS} AND hop IS NOT NULL AND trace_id IS NOT NULL"
)

Key = tuple[int, str, str, str, str, int]  # minute, source ns, source, dest ns, dest, latency


def latency_bucket(duration_us: int) -> int:
    """`duration_us` truncated to two significant digits (1234 → 1200, 99 → 99)."""
    if duration_us < 100:
        return duration_us
    scale = int(10 ** (len(str(duration_us)) - 2))
    return duration_us - duration_us % scale


@dataclass(frozen=True, slots=True)
class Call:
    """One call event as the rollup sees it (the columns `CALL_COLUMNS` selects)."""

    index: int
    time_ns: int
    direction: str | None
    hop: str | None
    trace_id: str | None
    source_ns: str
    source: str
    dest_ns: str
    dest: str
    duration_us: int
    failed: bool
    denied: bool
    mtls: bool
    request_bytes: int
    response_bytes: int

    @classmethod
    def of(cls, row: Sequence[Any]) -> Call:
        (idx, time_ns, direction, hop, trace_id, sns, src, dns, dst, dur, *flags) = row
        failed, denied, mtls, request_bytes, response_bytes = flags
        return cls(
            int(idx),
            int(time_ns),
            direction,
            hop,
            trace_id,
            sns,
            src,
            dns,
            dst,
            int(dur),
            bool(failed),
            bool(denied),
            bool(mtls),
            int(request_bytes),
            int(response_bytes),
        )

    @property
    def pair_key(self) -> tuple[str, str] | None:
        if self.direction in ("inbound", "outbound") and self.hop and self.trace_id:
            return self.trace_id, self.hop
        return None

    def key(self) -> Key:
        return (
            self.time_ns // MINUTE_NS,
            self.source_ns,
            self.source,
            self.dest_ns,
            self.dest,
            latency_bucket(self.duration_us),
        )

    def counts(self) -> tuple[int, int, int, int, int, int]:
        return (
            1,
            int(self.failed),
            int(self.denied),
            int(self.mtls),
            self.request_bytes,
            self.response_bytes,
        )


@dataclass(slots=True)
class _HopState:
    inbound_seen: bool = False
    counted_outbound: list[Call] | None = None


def fold(chunk: Sequence[Call], earlier: Iterable[Call] = ()) -> dict[Key, list[int]]:
    """The rollup's change for `chunk` (calls in index order).

    `earlier` holds the calls before the chunk that share a hop with a call in it (more do no
    harm); their effect is already in the rollup, they only tell the chunk's calls whether their
    hop has been seen. Returns [calls, failed, denied, mtls, request bytes, response bytes]
    deltas per key, which may be negative (an outbound call taken back)."""
    history: dict[tuple[str, str], list[Call]] = {}
    for call in earlier:
        key = call.pair_key
        if key is not None:
            history.setdefault(key, []).append(call)
    states: dict[tuple[str, str], _HopState] = {}

    def state(key: tuple[str, str]) -> _HopState:
        found = states.get(key)
        if found is None:
            found = states[key] = _HopState(counted_outbound=[])
            for past in sorted(history.get(key, ()), key=lambda c: c.index):
                _step(found, past, None)
        return found

    deltas: dict[Key, list[int]] = {}
    for call in chunk:
        key = call.pair_key
        if key is None:
            _add(deltas, call, 1)
        else:
            _step(state(key), call, deltas)
    return {key: row for key, row in deltas.items() if any(row)}


def _step(state: _HopState, call: Call, deltas: dict[Key, list[int]] | None) -> None:
    """One call of a hop, in index order; `deltas` None replays without counting."""
    assert state.counted_outbound is not None
    if call.direction == "outbound":
        if not state.inbound_seen:
            state.counted_outbound.append(call)
            if deltas is not None:
                _add(deltas, call, 1)
        return
    if deltas is not None:
        _add(deltas, call, 1)
    if not state.inbound_seen:
        state.inbound_seen = True
        if deltas is not None:
            for outbound in state.counted_outbound:
                _add(deltas, outbound, -1)
        state.counted_outbound.clear()


def _add(deltas: dict[Key, list[int]], call: Call, sign: int) -> None:
    row = deltas.setdefault(call.key(), [0, 0, 0, 0, 0, 0])
    for position, value in enumerate(call.counts()):
        row[position] += sign * value


RollupRow = tuple[str, str, str, str, int, int, int, int, int, int, int]
EdgeKey = tuple[str, str, str, str]  # source ns, source, dest ns, dest


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the graph reads of the rollup, from one state of it (`Rollup.read`)."""

    rows: list[RollupRow]  # per edge and latency bucket, the sums over the minutes
    spans: dict[EdgeKey, tuple[int, int]]  # per edge, its first and last minute with calls
    extent: tuple[int, int] | None  # the first and last minute holding a call, of all


def _minutes(first_minute: int | None, end_minute: int | None) -> tuple[str, list[int]]:
    """The WHERE clause (and its parameters) of the minutes [first, end); None: unbounded."""
    clauses, params = [], []
    if first_minute is not None:
        clauses.append("minute >= ?")
        params.append(first_minute)
    if end_minute is not None:
        clauses.append("minute < ?")
        params.append(end_minute)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


class Rollup:
    """DATA/rollup.db (or memory), kept in step with a ledger read through `reader`."""

    def __init__(self, reader: SqlReader, path: Path | None) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self.path: Path | None = path
        try:
            self._db = self._open(path)
        except (sqlite3.Error, OSError):
            self.path = None  # a read-only data directory: compute in memory
            self._db = self._open(None)

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        db = sqlite3.connect(
            ":memory:" if path is None else path, isolation_level=None, check_same_thread=False
        )
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # derived data: a lost commit is redone
            db.execute("PRAGMA busy_timeout=30000")
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version != _VERSION:
                db.execute("DROP TABLE IF EXISTS meta")
                db.execute("DROP TABLE IF EXISTS edge_minutes")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    # -- state -----------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _entry_id(self, index: int) -> bytes | None:
        rows = self._reader.query("SELECT id FROM events WHERE idx = ?", (index,))
        return None if not rows else bytes(rows[0][0])

    def _ledger_size(self) -> int:
        rows = self._reader.query("SELECT max(idx) FROM events")
        return 0 if rows[0][0] is None else int(rows[0][0]) + 1

    def _position(self) -> dict[str, Any]:
        """The meta of the rollup, reset when it does not describe this ledger's prefix."""
        meta = self._meta()
        upto = int(meta.get("upto", 0))
        if upto > 0 and self._entry_id(upto - 1) != meta.get("upto_id"):
            self._db.execute("DELETE FROM edge_minutes")
            self._db.execute("DELETE FROM meta")
            meta = {}
        meta.setdefault("upto", 0)
        meta.setdefault("inbound_hops", 0)
        meta.setdefault("outbound_hops", 0)
        return meta

    @property
    def upto(self) -> int:
        with self._lock:
            return int(self._meta().get("upto", 0))

    # -- catching up -----------------------------------------------------------------

    def catch_up(self, *, chunk: int = CHUNK) -> int:
        """Fold the ledger's entries the rollup has not seen; returns how many were read."""
        with self._lock:
            size = self._ledger_size()
            done = 0
            while True:
                self._db.execute("BEGIN IMMEDIATE")  # one writer across processes
                try:
                    meta = self._position()
                    start = int(meta["upto"])
                    if start >= size:
                        self._db.execute("COMMIT")
                        return done
                    end = min(size, start + chunk)
                    self._fold_range(meta, start, end)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                done += end - start

    def _fold_range(self, meta: dict[str, Any], start: int, end: int) -> None:
        """Add entries [start, end) to the rollup: `fold`'s rule, computed by SQLite."""
        params = {"a": start, "b": end}
        deltas: dict[Key, list[int]] = {}
        for row in self._reader.query(_COUNTED, params):
            deltas[tuple(row[:6])] = list(row[6:])
        if int(meta["outbound_hops"]) > 0:  # otherwise no earlier outbound call can exist
            for row in self._reader.query(_TAKEN_BACK, params):
                total = deltas.setdefault(tuple(row[:6]), [0, 0, 0, 0, 0, 0])
                for position, value in enumerate(row[6:]):
                    total[position] -= int(value)
        self._db.executemany(_UPSERT, ((*key, *row) for key, row in deltas.items() if any(row)))
        ((inbound, outbound),) = self._reader.query(_HOPS, params)
        meta["inbound_hops"] = int(meta["inbound_hops"]) + int(inbound or 0)
        meta["outbound_hops"] = int(meta["outbound_hops"]) + int(outbound or 0)
        meta["upto"] = end
        meta["upto_id"] = self._entry_id(end - 1)
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(meta.items()),
        )

    # -- reading ---------------------------------------------------------------------

    def read(self, first_minute: int | None, end_minute: int | None) -> Snapshot:
        """Rows, spans and extent of the minutes [first, end), all of one state of the rollup:
        one read transaction (another process's catch-up may commit meanwhile) under the lock
        (this one's may not run between the reads)."""
        where, params = _minutes(first_minute, end_minute)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(
                    "SELECT source_ns, source, dest_ns, dest, latency_us, sum(calls),"
                    " sum(failed), sum(denied), sum(mtls), sum(request_bytes),"
                    f" sum(response_bytes) FROM edge_minutes{where}"
                    " GROUP BY source_ns, source, dest_ns, dest, latency_us"
                    " HAVING sum(calls) > 0",
                    params,
                ).fetchall()
                spans = self._db.execute(
                    "SELECT source_ns, source, dest_ns, dest, min(minute), max(minute) FROM"
                    " (SELECT source_ns, source, dest_ns, dest, minute"
                    f" FROM edge_minutes{where}"
                    " GROUP BY source_ns, source, dest_ns, dest, minute HAVING sum(calls) > 0)"
                    " GROUP BY source_ns, source, dest_ns, dest",
                    params,
                ).fetchall()
                first, last = self._db.execute(
                    "SELECT min(minute), max(minute) FROM edge_minutes WHERE calls > 0"
                ).fetchone()
            finally:
                self._db.execute("COMMIT")
        return Snapshot(
            [tuple(row) for row in rows],
            {(a, b, c, d): (int(lo), int(hi)) for a, b, c, d, lo, hi in spans},
            None if first is None else (int(first), int(last)),
        )
