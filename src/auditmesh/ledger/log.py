"""The append-only log: sequencing, tile maintenance, proofs and signed checkpoints.

`Log` holds the rules; a `LogStorage` (SQLite or PostgreSQL, in `auditmesh.store`) holds
the bytes. Entries are opaque to the ledger: a 16-byte dedup key, the leaf data, and
columns the storage indexes. One writer appends (the sequencer); readers may share the
storage. Tiles are C2SP tlog-tiles, written in the same transaction as the entries, so a
proof for any leaf reads a handful of tiles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from auditmesh.ledger import merkle, tiles
from auditmesh.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from auditmesh.ledger.note import Signer, Verifier


@dataclass(frozen=True, slots=True)
class Entry:
    """One leaf to append: `key` deduplicates, `data` is hashed, `columns` are indexed."""

    key: bytes
    data: bytes
    columns: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root_hash: bytes
    note: bytes
    signed_ns: int


class LogStorage(Protocol):
    """What the log needs from a store. `write` must be durable when it returns."""

    def size(self) -> int: ...

    def read_tile(self, level: int, index: int) -> bytes: ...

    def read_stored_tile(self, level: int, index: int) -> tiles.StoredTile: ...

    def indices_of(self, keys: Sequence[bytes]) -> dict[bytes, int]: ...

    def data_of(self, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def write(
        self,
        start: int,
        entries: Sequence[Entry],
        tile_updates: dict[tuple[int, int], tiles.StoredTile],
    ) -> None: ...

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]: ...

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None: ...

    def checkpoints(self) -> Iterator[StoredCheckpoint]: ...

    def latest_checkpoint(self) -> StoredCheckpoint | None: ...


class ConflictingEntries(Exception):
    """Entries whose key the log already holds, or an earlier entry of the same append holds,
    with other data: `conflicts` maps each one's position (from 0) to the index holding
    that key (None: the earlier entry of the same append). Nothing was appended."""

    def __init__(self, conflicts: dict[int, int | None]) -> None:
        super().__init__(f"{len(conflicts)} entries reuse a key with other data")
        self.conflicts = conflicts


class Log:
    """Sequencer over a storage: `append` assigns consecutive indices, exactly once per key."""

    def __init__(
        self,
        storage: LogStorage,
        signer: Signer | None,  # None: a copy that can be read and verified, not signed
        verifier: Verifier,
        origin: str,
        clock_ns: Callable[[], int],
    ) -> None:
        self._storage = storage
        self._signer = signer
        self._verifier = verifier
        self.origin = origin
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._size = storage.size()
        self._sources = threading.local()  # one tile cache per reading thread

    @property
    def size(self) -> int:
        return self._size

    def reload_size(self) -> None:
        """Take the size from storage again, after a write that failed: had its commit
        reached the disk after all, the entries are there (and a retry finds them by key)."""
        with self._lock:
            self._size = self._storage.size()

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append durably; returns each entry's index (the original one for a duplicate).

        A duplicate is the same key with the same data: a key with other data (an id reused
        for another event) raises ConflictingEntries and nothing is appended, for a log
        that said "stored" must hold what it was given."""
        with self._lock:
            known = self._storage.indices_of([e.key for e in entries]) if entries else {}
            stored = self._storage.data_of(list(known)) if known else {}  # no duplicate, no read
            fresh: list[Entry] = []
            indices: list[int] = []
            conflicts: dict[int, int | None] = {}
            start = self._size
            for position, entry in enumerate(entries):
                index = known.get(entry.key)
                if index is None:
                    index = start + len(fresh)
                    known[entry.key] = index
                    fresh.append(entry)
                else:  # a duplicate: the stored entry's data, or an earlier fresh one's
                    held = stored[entry.key] if index < start else fresh[index - start].data
                    if entry.data != held:
                        conflicts[position] = index if index < start else None
                indices.append(index)
            if conflicts:
                raise ConflictingEntries(conflicts)
            if fresh:
                leaf_hashes = [merkle.leaf_hash(e.data) for e in fresh]
                updates = tiles.tiles_after_append(
                    start, leaf_hashes, self._storage.read_stored_tile
                )
                self._storage.write(start, fresh, updates)
                self._size = start + len(fresh)
            return indices

    def hashes(self) -> merkle.HashSource:
        """Subtree hashes from the stored tiles; full tiles stay cached across calls."""
        source: tiles.TileHashSource | None = getattr(self._sources, "source", None)
        if source is None:
            source = tiles.TileHashSource(self._storage.read_stored_tile)
            self._sources.source = source
        return source

    def root(self, size: int | None = None) -> bytes:
        return merkle.tree_root(self.hashes(), self._size if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_proof(index, self._size if size is None else size, self.hashes())

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return merkle.consistency_proof(size1, size2, self.hashes())

    def checkpoint(self) -> StoredCheckpoint | None:
        """Sign a checkpoint for the current size if the log grew since the last one.

        Before signing, the new tree is proven consistent with the last signed checkpoint
        (RFC 9162 §2.1.4), so the log never signs two inconsistent checkpoints even if its
        storage was altered underneath it.
        """
        with self._lock:
            size = self._size
            last = self._storage.latest_checkpoint()
            if last is not None and last.size >= size:
                return None
            # A new source reads the tiles as stored now, not the nodes proofs have cached.
            hashes = tiles.TileHashSource(self._storage.read_stored_tile)
            root_hash = merkle.tree_root(hashes, size)
            if last is not None:
                proof = merkle.consistency_proof(last.size, size, hashes)
                merkle.verify_consistency(last.size, size, proof, last.root_hash, root_hash)
            if self._signer is None:
                raise RuntimeError("this copy of the log has no signing key: it cannot sign")
            note = sign_checkpoint(Checkpoint(self.origin, size, root_hash), self._signer)
            stored = StoredCheckpoint(size, root_hash, note, self._clock_ns())
            self._storage.add_checkpoint(stored)
            return stored

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return self._storage.latest_checkpoint()

    def open_checkpoint(self, note: bytes) -> Checkpoint:
        return open_checkpoint(note, self._verifier, self.origin)
