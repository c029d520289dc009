"""Schema version 2: the query and graph columns, on new ledgers and backfilled on old ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from auditmesh.collector import entry_of
from auditmesh.datadir import open_ledger
from auditmesh.events import TCP, AuditEvent, Trace, new_event_id
from auditmesh.store.base import columns_of
from auditmesh.store.sqlite import MIGRATIONS, SCHEMA_VERSION
from tests.conftest import generate

NEW_COLUMNS = (
    "direction, path, source_ns, dest_ns, duration_us, request_bytes, response_bytes, mtls, hop"
)


def varied() -> list[AuditEvent]:
    """Generated calls plus the shapes the new columns distinguish: outbound with a span,
    TCP with default byte counts, no TLS, no trace, zero duration."""
    events = generate(40)
    first = events[0]
    assert first.trace is not None
    outbound = msgspec.structs.replace(
        first,
        id=new_event_id(),
        direction="outbound",
        trace=Trace(trace_id=first.trace.trace_id, span_id="1" * 16, parent_span_id="2" * 16),
    )
    tcp = msgspec.structs.replace(events[2], kind="tcp", http=None, tcp=TCP(), tls=None)
    bare = msgspec.structs.replace(events[3], trace=None, duration_us=0, direction=None)
    return [*events[4:], outbound, tcp, bare]


def test_columns_of_fills_the_new_columns(tmp_path: Path) -> None:
    events = varied()
    ledger = open_ledger(tmp_path, origin="test/log")
    try:
        ledger.log.append([entry_of(e) for e in events])
        rows = ledger.store.query(f"SELECT {NEW_COLUMNS} FROM events ORDER BY idx")
    finally:
        ledger.close()
    assert [tuple(r) for r in rows] == [columns_of(e)[10:] for e in events]
    outbound, tcp, bare = rows[-3:]
    assert outbound[0] == "outbound" and outbound[-1] == "1" * 16
    assert tcp[5:8] == (0, 0, 0)
    assert bare[0] is None and bare[4] == 0 and bare[-1] is None


def test_an_old_ledger_is_backfilled_from_the_canonical_bytes(tmp_path: Path) -> None:
    events = varied()
    with sqlite3.connect(tmp_path / "ledger.db") as db:  # a version-1 ledger
        db.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
        for index, event in enumerate(events):
            entry = entry_of(event)
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (index, entry.key, *entry.columns[:10], entry.data),
            )
    ledger = open_ledger(tmp_path, origin="test/log")
    try:
        rows = ledger.store.query(f"SELECT {NEW_COLUMNS} FROM events ORDER BY idx")
        (version,) = ledger.store.query("PRAGMA user_version")[0]
    finally:
        ledger.close()
    assert version == SCHEMA_VERSION
    assert [tuple(r) for r in rows] == [columns_of(e)[10:] for e in events]
