"""What every store offers, and how an event maps onto the indexed columns.

The ledger's `LogStorage` protocol covers appends, tiles and checkpoints; `Store` adds the
event reads the server, CLI and bundles need. Stores keep the event's canonical bytes as
the single source of truth; the indexed columns are derived from them by `columns_of`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from auditmesh.events import AuditEvent
from auditmesh.ledger.checkpoint import Checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.log import LogStorage


class StoreError(Exception):
    """The store cannot be opened or read; the message says which file and why."""


class StoreUnavailable(StoreError):
    """A write could not commit for now (the database locked by another process, the disk
    full, an I/O error): nothing of it was kept, and a later write may succeed."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    index: int
    key: bytes
    data: bytes

    @property
    def id(self) -> str:
        return str(uuid.UUID(bytes=self.key))


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Selection of stored events; every field is optional and fields are ANDed."""

    source: str | None = None  # SPIFFE ID of the caller
    dest: str | None = None  # SPIFFE ID of the callee
    service: str | None = None  # destination service name
    status: int | None = None
    trace_id: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int = 1000

    def sql(self) -> tuple[list[str], list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("source_id", self.source),
            ("dest_id", self.dest),
            ("dest_service", self.service),
            ("status", self.status),
            ("trace_id", self.trace_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since_ns is not None:
            clauses.append("time_ns >= ?")
            params.append(self.since_ns)
        if self.until_ns is not None:
            clauses.append("time_ns < ?")
            params.append(self.until_ns)
        return clauses, params


def event_key(event_id: str) -> bytes:
    """The 16-byte dedup key of a validated event id (canonical UUID text)."""
    return bytes.fromhex(event_id.replace("-", ""))  # 5× faster than uuid.UUID(...).bytes


def columns_of(event: AuditEvent) -> tuple[object, ...]:
    """Indexed columns, in the order of the store's INSERT between `idx, id` and `data`.

    Schema version 2 appended direction … hop (see store/sqlite.py's migration 2, which
    backfills them for older ledgers with the same rules)."""
    src, dst, http, tcp, trace = (
        event.source,
        event.destination,
        event.http,
        event.tcp,
        event.trace,
    )
    request_bytes = response_bytes = None
    if http is not None:
        request_bytes, response_bytes = http.request_bytes, http.response_bytes
    elif tcp is not None:
        request_bytes, response_bytes = tcp.sent_bytes, tcp.received_bytes
    hop = None
    if trace is not None:
        if event.direction == "outbound":
            hop = trace.span_id
        elif event.direction == "inbound":
            hop = trace.parent_span_id
    return (
        int(event.time_ns),
        event.kind,
        None if src is None else src.identity,
        None if src is None else src.service,
        None if dst is None else dst.identity,
        None if dst is None else dst.service,
        None if http is None else http.status,
        None if event.authz is None else event.authz.decision,
        None if trace is None else trace.trace_id,
        event.outcome,
        event.direction,
        None if http is None else http.path,
        None if src is None else src.namespace,
        None if dst is None else dst.namespace,
        event.duration_us,
        request_bytes,
        response_bytes,
        int(event.tls is not None and event.tls.mutual),
        hop,
    )


class Store(LogStorage, Protocol):
    def event_by_id(self, key: bytes) -> StoredEvent | None: ...

    def find(self, where: EventFilter) -> list[StoredEvent]: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...


class StoreReader:
    """A store seen as a `LogReader`; also checks stored checkpoint roots against notes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.size = store.size
        self.entries = store.entries
        self.read_tile = store.read_stored_tile  # verify checks the interior nodes too

    def checkpoint_notes(self) -> list[bytes]:
        notes = []
        for stored in self._store.checkpoints():
            text = stored.note.decode(errors="replace").split("\n\n", 1)[0] + "\n"
            try:
                signed = Checkpoint.parse(text)
            except ValueError as exc:
                raise VerificationError(
                    f"stored checkpoint is malformed: {exc}", where=f"checkpoint row {stored.size}"
                ) from exc
            for what, in_note, in_row in (
                ("size", signed.size, stored.size),
                ("root hash", signed.root_hash, stored.root_hash),
            ):
                if in_note != in_row:
                    raise VerificationError(
                        f"stored checkpoint {what} differs from its signed note",
                        expected=in_note,
                        computed=in_row,
                        where=f"checkpoint row {stored.size}",
                    )
            notes.append(stored.note)
        return notes


__all__ = [
    "EventFilter",
    "Store",
    "StoreError",
    "StoredEvent",
    "columns_of",
    "event_key",
    "StoreReader",
]
