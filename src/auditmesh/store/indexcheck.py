"""`log verify --indexes`: the query columns, re-derived from each entry's canonical bytes.

The Merkle log proves the canonical bytes; the columns stored beside them (the dedup key and
`store.sqlite.INDEX_COLUMNS`) are derived data that `auditmesh query`, the console and
`bundle create` select by. Edited, they would hide an event from a query (a status changed
from 503 to 200, say) without breaking any proof. This check decodes every entry, derives
its columns as the store did at insert (`columns_of`, `event_key`) and names the first row
that differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from auditmesh.events import EventError, decode_event
from auditmesh.ledger.errors import VerificationError
from auditmesh.store.base import columns_of, event_key
from auditmesh.store.sqlite import INDEX_COLUMNS, SQLiteStore
from auditmesh.workers import map_in_workers

IndexedRow = tuple[int, bytes, tuple[object, ...], bytes]  # index, key, columns, data
SEGMENT = 1 << 14


def check_indexes(
    data_dir: Path,
    size: int,
    *,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Check entries [0, size) of the ledger in `data_dir` in segments, in `jobs` processes
    (this one and spawned workers) when more than one; the first divergence in index order
    is raised."""
    bounds = [(start, min(start + SEGMENT, size)) for start in range(0, size, SEGMENT)]
    checked = 0
    for count in _segments(data_dir, bounds, jobs):
        checked += count
        if progress is not None:
            progress(checked, size)
    return checked


def _segments(data_dir: Path, bounds: list[tuple[int, int]], jobs: int) -> Iterator[int]:
    """Rows checked per segment, in order: all here with one job (or one segment), else
    here and in spawned workers (`map_in_workers`)."""
    store = SQLiteStore(data_dir, create=False)
    try:
        yield from map_in_workers(
            jobs if len(bounds) >= 2 else 1,
            _open_in_worker,
            data_dir,
            _segment_in_worker,
            [start for start, _ in bounds],
            [end for _, end in bounds],
            here=lambda start, end: check_index_rows(store.indexed_rows(start, end)),
        )
    finally:
        store.close()


_STORE: SQLiteStore | None = None  # one per worker process


def _open_in_worker(data_dir: Path) -> None:
    global _STORE
    _STORE = SQLiteStore(data_dir, create=False)


def _segment_in_worker(start: int, end: int) -> int:
    assert _STORE is not None, "opened by _open_in_worker"
    return check_index_rows(_STORE.indexed_rows(start, end))


def check_index_rows(rows: Iterable[IndexedRow]) -> int:
    """How many rows were checked; VerificationError at the first column that differs."""
    count = 0
    for index, key, stored, data in rows:
        try:
            event = decode_event(data)
        except EventError as exc:
            raise VerificationError(
                f"the entry is not an audit event: {exc}", where=f"index {index}"
            ) from None
        # Each value named as what it is: the stored column, and what the event's canonical
        # bytes (the proven data) give; "expected"/"computed" would not say which is which.
        if key != (derived_key := event_key(event.id)):
            raise VerificationError(
                f"the dedup key column is stored as {key.hex()}, but the event's id "
                f"{event.id} gives {derived_key.hex()}",
                where=f"index {index} column id",
            )
        derived = columns_of(event)
        if stored != derived:
            name, said, got = next(
                (name, said, got)
                for name, said, got in zip(INDEX_COLUMNS, derived, stored, strict=True)
                if said != got
            )
            raise VerificationError(
                f"the query column {name} is stored as {got!r}, but the event's canonical "
                f"bytes say {said!r} (a query would miss or misplace this event)",
                where=f"index {index} column {name}",
            )
        count += 1
    return count
