"""The ledger's events of a time window, in ledger order: what replay and findings read.

Place in the house: a read-only helper of the console's JSON endpoints (`console/routes.py`),
over the `Store` protocol. Ledger order is arrival order, not event time: reading starts at the
first entry inside the window (the store's time index) and every later entry is checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from auditmesh.events import AuditEvent, EventError, decode_event
from auditmesh.store.base import EventFilter, Store

READ_BATCH = 2000


class RecordedError(ValueError):
    """A stored entry is not a valid event; the message names its index."""


def recorded(store: Store, since_ns: int, until_ns: int) -> Iterator[tuple[int, AuditEvent]]:
    """`(index, event)` for every stored event with `since_ns <= time_ns < until_ns`."""
    first = store.find(EventFilter(since_ns=since_ns, until_ns=until_ns, limit=1))
    end = store.size()
    start = first[0].index if first else end
    for batch in range(start, end, READ_BATCH):
        for index, data in list(store.entries(batch, min(end, batch + READ_BATCH))):
            try:
                event = decode_event(data)
            except EventError as exc:
                raise RecordedError(f"ledger entry {index} is not a valid event: {exc}") from None
            if since_ns <= event.time_ns < until_ns:
                yield index, event
