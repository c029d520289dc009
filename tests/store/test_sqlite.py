"""SQLite store and the log's append path: durable, consecutive, exactly once."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
import weakref
from pathlib import Path

import pytest

from auditmesh.collector import entry_of
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import canonical_bytes
from auditmesh.ledger import merkle
from auditmesh.ledger.verify import verify_log
from auditmesh.store.base import EventFilter, StoreError, StoreReader, event_key
from auditmesh.store.sqlite import SCHEMA_VERSION
from tests.conftest import generate


def test_append_assigns_consecutive_indices_and_survives_reopen(tmp_path: Path) -> None:
    events = generate(300)
    ledger = open_ledger(tmp_path, origin="test/log")
    assert ledger.log.append([entry_of(e) for e in events[:100]]) == list(range(100))
    assert ledger.log.append([entry_of(e) for e in events[100:]]) == list(range(100, 300))
    ledger.close()
    reopened = open_ledger(tmp_path, create=False)
    try:
        assert reopened.log.size == 300
        stored = reopened.store.event_by_id(event_key(events[123].id))
        assert stored is not None and stored.index == 123
        assert stored.data == canonical_bytes(events[123])
        leaves = [merkle.leaf_hash(canonical_bytes(e)) for e in events]
        assert reopened.log.root() == merkle.root(leaves)
    finally:
        reopened.close()


def test_duplicates_keep_their_first_index(ledger: Ledger) -> None:
    events = generate(10)
    first = [entry_of(e) for e in events[:6]]
    assert ledger.log.append(first) == [0, 1, 2, 3, 4, 5]
    again = [entry_of(events[2]), entry_of(events[6]), entry_of(events[6]), entry_of(events[0])]
    assert ledger.log.append(again) == [2, 6, 6, 0]
    assert ledger.log.size == 7


def test_query_indexes_select_by_service_status_and_time(ledger: Ledger) -> None:
    events = generate(500)
    ledger.log.append([entry_of(e) for e in events])
    denied = ledger.store.find(EventFilter(status=403))
    expected = [i for i, e in enumerate(events) if e.http is not None and e.http.status == 403]
    assert [s.index for s in denied] == expected and expected
    payments = ledger.store.find(EventFilter(service="payments", limit=5))
    assert len(payments) == 5
    middle = events[250].time_ns
    later = ledger.store.find(EventFilter(since_ns=middle, limit=10_000))
    assert [s.index for s in later] == list(range(250, 500))


def test_checkpoint_only_when_the_log_grew(ledger: Ledger) -> None:
    empty = ledger.log.checkpoint()  # a new log signs its empty tree once
    assert empty is not None and empty.size == 0 and empty.root_hash == merkle.EMPTY_ROOT
    assert ledger.log.checkpoint() is None
    ledger.log.append([entry_of(e) for e in generate(3)])
    first = ledger.log.checkpoint()
    assert first is not None and first.size == 3
    assert ledger.log.checkpoint() is None
    checkpoint = ledger.log.open_checkpoint(first.note)
    assert checkpoint.root_hash == ledger.log.root()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    open_ledger(tmp_path, origin="test/log").close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this auditmesh"):
        open_ledger(tmp_path)


def test_missing_ledger_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no ledger at .*: give the server's data directory"):
        open_ledger(tmp_path / "nowhere", create=False)


def test_an_emptied_ledger_file_is_refused_not_read_as_an_empty_log(tmp_path: Path) -> None:
    """A 0-byte ledger.db opens as an empty SQLite database: readers took it as a log of 0
    entries, which `log verify` passed ("OK: 0 entries"), and migrated it on the way."""
    ledger = open_ledger(tmp_path, origin="test/log")
    ledger.log.append([entry_of(e) for e in generate(10)])
    ledger.close()
    (tmp_path / "ledger.db").write_bytes(b"")
    with pytest.raises(StoreError, match="holds no ledger: the database is empty or has none"):
        open_ledger(tmp_path, create=False)
    assert (tmp_path / "ledger.db").stat().st_size == 0  # read, never written
    with sqlite3.connect(tmp_path / "ledger.db") as other:  # a database, but not a ledger
        other.execute("CREATE TABLE notes (text)")
    with pytest.raises(StoreError, match="holds no ledger: the database is empty or has none"):
        open_ledger(tmp_path, create=False)


def test_origin_cannot_change(tmp_path: Path) -> None:
    open_ledger(tmp_path, origin="test/one").close()
    with pytest.raises(ValueError, match="cannot be reopened"):
        open_ledger(tmp_path, origin="test/two")


def test_signing_key_is_private(tmp_path: Path) -> None:
    open_ledger(tmp_path, origin="test/log").close()
    assert (tmp_path / "keys" / "log.skey").stat().st_mode & 0o777 == 0o600


def test_a_ledger_from_before_interior_nodes_proves_grows_and_verifies(tmp_path: Path) -> None:
    """Schema 3 added `tiles.nodes`; tiles written before it have NULL there."""
    events = generate(700)
    ledger = open_ledger(tmp_path, origin="test/log")
    ledger.log.append([entry_of(e) for e in events[:600]])
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("UPDATE tiles SET nodes = NULL")
    ledger = open_ledger(tmp_path, create=False)
    try:
        ledger.log.append([entry_of(e) for e in events[600:]])
        leaves = [merkle.leaf_hash(canonical_bytes(e)) for e in events]
        root = merkle.root(leaves)
        for index in (0, 300, 599, 600, 699):
            proof = ledger.log.inclusion_proof(index)
            merkle.verify_inclusion(leaves[index], index, 700, proof, root)
        (missing,) = ledger.store.query("SELECT count(*) FROM tiles WHERE nodes IS NULL")[0]
        assert missing == 3  # 0/000, 0/001 and 1/000; the grown edge tile 0/002 has them again
        ledger.log.checkpoint()
        report = verify_log(StoreReader(ledger.store), ledger.log.verifier)
        assert report.size == 700
    finally:
        ledger.close()


def test_commits_are_checkpointed_off_the_writer_and_the_thread_ends_on_close(
    tmp_path: Path,
) -> None:
    """The pages a commit put in the WAL reach ledger.db through the background checkpointer
    (the writer's own autocheckpoint waits for 64 MiB of WAL, far more than this writes)."""
    threads_before = set(threading.enumerate())
    ledger = open_ledger(tmp_path, origin="test/log")
    database = tmp_path / "ledger.db"
    before = database.stat().st_size
    events = generate(2_000)
    for start in range(0, 2_000, 500):
        ledger.log.append([entry_of(e) for e in events[start : start + 500]])
    deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
    while database.stat().st_size <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert database.stat().st_size > before, "no checkpoint copied the WAL into ledger.db"
    [checkpointer] = _checkpointers(set(threading.enumerate()) - threads_before)
    ledger.log.checkpoint()
    ledger.close()
    assert not checkpointer.is_alive()
    reopened = open_ledger(tmp_path, create=False)
    try:
        assert reopened.log.size == 2_000
        assert verify_log(StoreReader(reopened.store), reopened.log.verifier).size == 2_000
    finally:
        reopened.close()


def _checkpointers(threads: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threads if t.name == "auditmesh-wal-checkpoint"]


def test_a_store_that_only_reads_starts_no_checkpointer(tmp_path: Path) -> None:
    open_ledger(tmp_path, origin="test/log").close()
    threads_before = set(threading.enumerate())
    reader = open_ledger(tmp_path, create=False)
    try:
        assert reader.log.size == 0
        assert not _checkpointers(set(threading.enumerate()) - threads_before)
    finally:
        reader.close()


def test_a_store_dropped_without_close_ends_its_checkpointer(tmp_path: Path) -> None:
    """A store that wrote and was then dropped unclosed is freed, as before the checkpointer:
    its thread must not hold the store (and its connections and files) alive for good."""
    threads_before = set(threading.enumerate())
    ledger = open_ledger(tmp_path, origin="test/log")
    ledger.log.append([entry_of(e) for e in generate(50)])
    store = weakref.ref(ledger.store)
    [thread] = _checkpointers(set(threading.enumerate()) - threads_before)
    del ledger
    gc.collect()
    thread.join(timeout=10)
    leaked = store()
    if leaked is not None:
        leaked.close()
    assert leaked is None, "the checkpointer thread keeps the unclosed store alive"
    assert not thread.is_alive()
    reopened = open_ledger(tmp_path, create=False)
    try:
        assert reopened.log.size == 50
    finally:
        reopened.close()
