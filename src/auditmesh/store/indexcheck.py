"""`log verify --indexes`: the query columns, re-derived from each entry's canonical bytes.

The Merkle log proves the canonical bytes; the columns stored beside them (the dedup key and
`store.sqlite.INDEX_COLUMNS`) are derived data that `auditmesh query`, the console and
`bundle create` select by. Edited, they would hide an event from a query (a status changed
from 503 to 200, say) without breaking any proof. This check decodes every entry, derives
its columns as the store did at insert (`columns_of`, `event_key`) and names the first row
that differs.
"""

from __future__ import annotations

from collections.abc import Iterable

from auditmesh.events import EventError, decode_event
from auditmesh.ledger.errors import VerificationError
from auditmesh.store.base import columns_of, event_key
from auditmesh.store.sqlite import INDEX_COLUMNS

IndexedRow = tuple[int, bytes, tuple[object, ...], bytes]  # index, key, columns, data


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
        if key != event_key(event.id):
            raise VerificationError(
                "the dedup key column differs from the event's id",
                expected=event_key(event.id).hex(),
                computed=key.hex(),
                where=f"index {index} column id",
            )
        derived = columns_of(event)
        if stored != derived:
            name, want, got = next(
                (name, want, got)
                for name, want, got in zip(INDEX_COLUMNS, derived, stored, strict=True)
                if want != got
            )
            raise VerificationError(
                f"the query column {name} differs from the event's canonical bytes (a query "
                "would miss or misplace this event)",
                expected=want,
                computed=got,
                where=f"index {index} column {name}",
            )
        count += 1
    return count
