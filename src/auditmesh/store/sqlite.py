"""Embedded SQLite store, the default: one file in the data directory a person can back up.

WAL mode with `synchronous=FULL`: a commit is on disk when `write` returns. One writer
connection (the sequencer's thread); each reading thread gets its own connection, so
reads run alongside appends. The schema is versioned with `PRAGMA user_version` and
upgraded by the ordered migrations below.

Committed pages are copied from the WAL into the database file (a checkpoint) by a thread
of their own (`WalCheckpointer`), not by the commit that filled the WAL, so an append does
not wait for those writes and their fsync.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from auditmesh.ledger.log import Entry, StoredCheckpoint
from auditmesh.ledger.tiles import StoredTile
from auditmesh.store.base import EventFilter, StoredEvent, StoreError, StoreUnavailable

# Each migration takes the schema from version i to i+1; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE events (
        idx INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        time_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        source_id TEXT,
        source_service TEXT,
        dest_id TEXT,
        dest_service TEXT,
        status INTEGER,
        decision TEXT,
        trace_id TEXT,
        outcome TEXT NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX events_time ON events (time_ns);
    CREATE INDEX events_source ON events (source_id, time_ns);
    CREATE INDEX events_dest ON events (dest_id, time_ns);
    CREATE INDEX events_dest_service ON events (dest_service, time_ns);
    CREATE INDEX events_status ON events (status, time_ns);
    CREATE INDEX events_trace ON events (trace_id) WHERE trace_id IS NOT NULL;
    CREATE TABLE tiles (
        level INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TABLE checkpoints (
        size INTEGER PRIMARY KEY, root BLOB NOT NULL, note BLOB NOT NULL,
        signed_ns INTEGER NOT NULL
    );
    """,
    # 2 (issue 6, analysis/query.py and analysis/rollup.py): columns for the query filters and
    # the service graph, backfilled from the canonical bytes; `hop` is the W3C span id both
    # sides of one call share (the outbound event's span, the inbound event's parent span).
    # Partial indexes cover the rare values only; queries repeat their WHERE term.
    """
    ALTER TABLE events ADD COLUMN direction TEXT;
    ALTER TABLE events ADD COLUMN path TEXT;
    ALTER TABLE events ADD COLUMN source_ns TEXT;
    ALTER TABLE events ADD COLUMN dest_ns TEXT;
    ALTER TABLE events ADD COLUMN duration_us INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN request_bytes INTEGER;
    ALTER TABLE events ADD COLUMN response_bytes INTEGER;
    ALTER TABLE events ADD COLUMN mtls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN hop TEXT;
    UPDATE events SET
        direction = json_extract(CAST(data AS TEXT), '$.direction'),
        path = json_extract(CAST(data AS TEXT), '$.http.path'),
        source_ns = json_extract(CAST(data AS TEXT), '$.source.namespace'),
        dest_ns = json_extract(CAST(data AS TEXT), '$.destination.namespace'),
        duration_us = coalesce(json_extract(CAST(data AS TEXT), '$.duration_us'), 0),
        request_bytes = CASE
            WHEN json_type(CAST(data AS TEXT), '$.http') IS NOT NULL
            THEN json_extract(CAST(data AS TEXT), '$.http.request_bytes')
            WHEN json_type(CAST(data AS TEXT), '$.tcp') IS NOT NULL
            THEN coalesce(json_extract(CAST(data AS TEXT), '$.tcp.sent_bytes'), 0) END,
        response_bytes = CASE
            WHEN json_type(CAST(data AS TEXT), '$.http') IS NOT NULL
            THEN json_extract(CAST(data AS TEXT), '$.http.response_bytes')
            WHEN json_type(CAST(data AS TEXT), '$.tcp') IS NOT NULL
            THEN coalesce(json_extract(CAST(data AS TEXT), '$.tcp.received_bytes'), 0) END,
        mtls = coalesce(json_extract(CAST(data AS TEXT), '$.tls.mutual'), 0),
        hop = CASE json_extract(CAST(data AS TEXT), '$.direction')
            WHEN 'outbound' THEN json_extract(CAST(data AS TEXT), '$.trace.span_id')
            WHEN 'inbound' THEN json_extract(CAST(data AS TEXT), '$.trace.parent_span_id') END;
    CREATE INDEX events_source_service ON events (source_service, time_ns);
    CREATE INDEX events_path ON events (path, time_ns) WHERE path IS NOT NULL;
    CREATE INDEX events_kind ON events (kind, time_ns) WHERE kind NOT IN ('http', 'tcp');
    CREATE INDEX events_decision ON events (decision, time_ns) WHERE decision IN ('deny', 'audit');
    """,
    # 3 (ledger/tiles.py StoredTile): each tile's interior nodes beside it, so a proof reads
    # them instead of rehashing the tile. Older tiles keep NULL and are hashed when read.
    """
    ALTER TABLE tiles ADD COLUMN nodes BLOB;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
DB_NAME = "ledger.db"
# SQLite "Write-Ahead Logging" §3 (checkpointing): the writer checkpoints after a commit
# only once the WAL passes this many pages (64 MiB of 4 KiB pages); SQLite's default is
# 1,000. The WAL restarts from its beginning only when a commit finds it all copied, which
# under a steady load is mostly this checkpoint's doing, so the file grows to about this
# size (95 MiB at most in a review's runs, when the thread held the checkpoint lock).
WRITER_AUTOCHECKPOINT_PAGES = 16_384
# SQLite "Memory-Mapped I/O": a whole-ledger scan (`log verify`) reads the database file's
# pages in place instead of copying each with a read(2), about 12 % less time a row here.
# SQLite caps the mapping at 2 GiB by default; pages past it (and the WAL's) are read as before.
# Only scans map: a file truncated under a mapping faults the process (SIGBUS) instead of
# failing a read, and a server's readers keep running.
SCAN_MMAP_BYTES = 1 << 31
# Byte columns are read with CAST(… AS BLOB): a value someone rewrote as TEXT (the sqlite3
# shell's replace() does) still comes back as its bytes, to be hashed and found wrong by
# `log verify`, not as a str (or a UTF-8 decoding error) that breaks the reader.

INDEX_COLUMNS = (
    "time_ns", "kind", "source_id", "source_service", "dest_id", "dest_service", "status",
    "decision", "trace_id", "outcome", "direction", "path", "source_ns", "dest_ns",
    "duration_us", "request_bytes", "response_bytes", "mtls", "hop",
)  # fmt: skip
"""The query columns, in the order of `store.base.columns_of`: derived from the canonical
bytes at insert, re-derived and compared by `check_index_rows` (`log verify --indexes`)."""
_INSERT_EVENT = (
    f"INSERT INTO events (idx, id, {', '.join(INDEX_COLUMNS)}, data)"
    f" VALUES ({', '.join('?' * (len(INDEX_COLUMNS) + 3))})"
)
_EVENT_COLUMNS = "idx, CAST(id AS BLOB), CAST(data AS BLOB)"


_EMPTY = (
    "{path} holds no ledger: the database is empty or has none of a ledger's tables (every "
    "ledger the server makes has them), so the file was emptied or replaced, or is not one"
)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")  # first: the next statement may wait for a lock
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    return conn


class SQLiteStore:
    """`LogStorage` and event reads over one SQLite database file."""

    def __init__(self, data_dir: Path, *, create: bool = True, scan: bool = False) -> None:
        """`scan`: this store's readers will read the whole ledger (`log verify`), so they map
        the file into memory (`SCAN_MMAP_BYTES`)."""
        self.path = Path(data_dir) / DB_NAME
        self._scan = scan
        if not create and not self.path.exists():
            raise StoreError(
                f"no ledger at {self.path}: give the server's data directory with --data DIR "
                "(`auditmesh server --data DIR` creates one)"
            )
        if not create and self.path.stat().st_size == 0:
            raise StoreError(_EMPTY.format(path=self.path))  # opening would write a header
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._writer = self._connect()
        self._checkpointer: WalCheckpointer | None = None  # started by the first write
        self._migrate(create)

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return _connect(self.path)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            if self._scan:
                conn.execute(f"PRAGMA mmap_size={SCAN_MMAP_BYTES}")
            self._local.conn = conn
        return conn

    def _migrate(self, create: bool) -> None:
        try:
            (version,) = self._writer.execute("PRAGMA user_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a readable ledger: {exc}") from exc
        if version == 0 and not create:
            # An emptied file opens as an empty database: read as a log of 0 entries, it would
            # verify. Only the server, making a ledger, may find (and fill) one.
            self.close()
            raise StoreError(_EMPTY.format(path=self.path))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this auditmesh "
                f"({SCHEMA_VERSION}); upgrade auditmesh"
            )
        for number in range(version, SCHEMA_VERSION):
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._writer.execute(statement)
                self._writer.execute(f"PRAGMA user_version={number + 1}")
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- meta ----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._writer.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- LogStorage ----------------------------------------------------------------

    def size(self) -> int:
        row = self._reader().execute("SELECT max(idx) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def read_tile(self, level: int, index: int) -> bytes:
        row = (
            self._reader()
            .execute(
                "SELECT CAST(data AS BLOB) FROM tiles WHERE level = ? AND idx = ?", (level, index)
            )
            .fetchone()
        )
        return b"" if row is None else bytes(row[0])

    def read_stored_tile(self, level: int, index: int) -> StoredTile:
        row = (
            self._reader()
            .execute(
                "SELECT CAST(data AS BLOB), CAST(nodes AS BLOB) FROM tiles"
                " WHERE level = ? AND idx = ?",
                (level, index),
            )
            .fetchone()
        )
        if row is None:
            return StoredTile(b"")
        return StoredTile(bytes(row[0]), b"" if row[1] is None else bytes(row[1]))

    def indices_of(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        return {bytes(key): int(idx) for key, idx in self._by_key("idx", keys)}

    def data_of(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return {bytes(key): bytes(data) for key, data in self._by_key("CAST(data AS BLOB)", keys)}

    def _by_key(self, column: str, keys: Sequence[bytes]) -> Iterator[tuple[Any, Any]]:
        """(id, column) of the stored events with these ids, on the writer's connection."""
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self._writer.execute(
                f"SELECT id, {column} FROM events WHERE id IN ({marks})", chunk
            )

    def write(
        self, start: int, entries: Sequence[Entry], tile_updates: dict[tuple[int, int], StoredTile]
    ) -> None:
        if self._checkpointer is None:
            self._writer.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
            self._checkpointer = WalCheckpointer(self.path)
            # The thread holds the path, not the store: a store dropped unclosed is freed
            # (its connections closed) as before, and this ends the thread and its own.
            weakref.finalize(self, self._checkpointer.stop)
        try:
            self._write(start, entries, tile_updates)
        except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk full, I/O
            raise StoreUnavailable(f"the ledger could not commit ({self.path}): {exc}") from exc
        self._checkpointer.kick()

    def _write(
        self, start: int, entries: Sequence[Entry], tile_updates: dict[tuple[int, int], StoredTile]
    ) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                _INSERT_EVENT,
                ((start + i, e.key, *e.columns, e.data) for i, e in enumerate(entries)),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO tiles (level, idx, data, nodes) VALUES (?, ?, ?, ?)",
                ((level, index, *tile) for (level, index), tile in tile_updates.items()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        # INTEGER and BLOB columns come back as int and bytes already: rows pass through.
        yield from self._reader().execute(
            "SELECT idx, CAST(data AS BLOB) FROM events WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )

    def row_count(self) -> int:
        """Rows in the events table: the log's size, unless rows were added outside it."""
        (count,) = self._reader().execute("SELECT count(*) FROM events").fetchone()
        return int(count)

    def indexed_rows(
        self, start: int, end: int
    ) -> Iterator[tuple[int, bytes, tuple[object, ...], bytes]]:
        """(index, dedup key, query columns, canonical bytes) of entries [start, end)."""
        cursor = self._reader().execute(
            f"SELECT idx, CAST(id AS BLOB), {', '.join(INDEX_COLUMNS)}, CAST(data AS BLOB)"
            " FROM events WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )
        for idx, key, *columns, data in cursor:
            yield idx, key, tuple(columns), data

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        try:
            self._writer.execute(
                "INSERT INTO checkpoints (size, root, note, signed_ns) VALUES (?, ?, ?, ?)",
                (checkpoint.size, checkpoint.root_hash, checkpoint.note, checkpoint.signed_ns),
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"the checkpoint could not be stored ({self.path}): {exc}"
            ) from exc

    def checkpoints(self) -> Iterator[StoredCheckpoint]:
        cursor = self._reader().execute(
            "SELECT size, CAST(root AS BLOB), CAST(note AS BLOB), signed_ns FROM checkpoints"
            " ORDER BY size"
        )
        for size, root, note, signed_ns in cursor:
            yield StoredCheckpoint(int(size), bytes(root), bytes(note), int(signed_ns))

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = (
            self._reader()
            .execute(
                "SELECT size, CAST(root AS BLOB), CAST(note AS BLOB), signed_ns FROM checkpoints"
                " ORDER BY size DESC LIMIT 1"
            )
            .fetchone()
        )
        if row is None:
            return None
        return StoredCheckpoint(int(row[0]), bytes(row[1]), bytes(row[2]), int(row[3]))

    # -- event reads ---------------------------------------------------------------

    def event_by_id(self, key: bytes) -> StoredEvent | None:
        row = (
            self._reader()
            .execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?", (key,))
            .fetchone()
        )
        return None if row is None else StoredEvent(int(row[0]), bytes(row[1]), bytes(row[2]))

    def query(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[tuple[Any, ...]]:
        """Rows of a read-only SQL query on this thread's reader connection (analysis/)."""
        return self._reader().execute(sql, params).fetchall()

    def find(self, where: EventFilter) -> list[StoredEvent]:
        clauses, params = where.sql()
        sql = f"SELECT {_EVENT_COLUMNS} FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY idx LIMIT ?"
        rows = self._reader().execute(sql, (*params, where.limit)).fetchall()
        return [StoredEvent(int(i), bytes(k), bytes(d)) for i, k, d in rows]


class WalCheckpointer:
    """A thread that checkpoints the WAL after each commit it is told of, on a connection of
    its own. PASSIVE (SQLite `wal_checkpoint`): it copies what it can without waiting for
    readers or the writer, which goes on appending meanwhile; a checkpoint that cannot run
    now is tried again after the next commit, and the writer's own autocheckpoint keeps
    the WAL near `WRITER_AUTOCHECKPOINT_PAGES` should this thread fall behind. Checkpoints
    never make a commit more or less durable: the commit's fsync of the WAL did that."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stopping = False
        self.checkpoints = 0  # run so far
        self._thread = threading.Thread(target=self._run, name="auditmesh-wal-checkpoint")
        self._thread.daemon = True  # a process that never closes its store still exits
        self._thread.start()

    def kick(self) -> None:
        """Frames were committed: checkpoint them when the thread is free."""
        self._wake.set()

    def stop(self) -> None:
        """Have the thread end, without waiting for it (a finalizer may run on any thread,
        this one included)."""
        self._stopping = True
        self._wake.set()

    def close(self) -> None:
        self.stop()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = _connect(self._path)
        except StoreError:  # not even opened: the writer's own autocheckpoint does the work
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:  # e.g. disk full now: the next commit asks again
                    continue
                self.checkpoints += 1
        finally:
            conn.close()
