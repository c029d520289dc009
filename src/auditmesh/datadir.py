"""The data directory: the store, the log's signing key and its origin, opened together.

Layout (everything a backup needs):
    DIR/ledger.db         events, tiles and checkpoints (SQLite, WAL)
    DIR/keys/log.skey     checkpoint signing key, note format, mode 0600
    DIR/keys/log.vkey     its verifier key, to hand to auditors
    DIR/keys/api.token    the API token for reads of events, mode 0600 (server/api_auth.py)
    DIR/ca/               the mesh CA and join tokens, when `auditmesh ca init` made one
    DIR/pending/          audit events of `ca token`/`ca issue` not yet in the log (pending.py)
    DIR/rollup.db         per-minute graph summary: derived, safe to delete (analysis/rollup.py)
    DIR/server.lock       held by the one server (the sequencer) using the directory
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from auditmesh.ledger.log import Log
from auditmesh.ledger.note import Signer, Verifier, generate_key
from auditmesh.store.base import StoreError, StoreReader
from auditmesh.store.sqlite import SQLiteStore

ORIGIN_META = "origin"


@dataclass(frozen=True)
class Ledger:
    data_dir: Path
    store: SQLiteStore
    log: Log

    @property
    def vkey(self) -> str:
        return (self.data_dir / "keys" / "log.vkey").read_text().strip()

    def close(self) -> None:
        self.store.close()


def default_origin() -> str:
    """C2SP tlog-checkpoint origin: a schema-less URL naming this log."""
    host = socket.gethostname().split(".")[0].lower() or "localhost"
    return f"auditmesh.local/{host}"


def open_ledger(
    data_dir: Path, *, origin: str | None = None, create: bool = True, scan: bool = False
) -> Ledger:
    """Open (or, with `create`, initialise) the ledger in `data_dir`; `scan`: to read all of
    it (`SQLiteStore`'s)."""
    data_dir = Path(data_dir)
    store = SQLiteStore(data_dir, create=create, scan=scan)
    stored_origin = store.get_meta(ORIGIN_META)
    if stored_origin is None and not create:  # a reader writes nothing, not even this
        store.close()
        raise StoreError(
            f"{store.path} records no log origin: the server is creating it this moment (try "
            "again), or the meta table was altered (restore the data directory from a backup)"
        )
    if stored_origin is None:
        stored_origin = origin or default_origin()
        store.set_meta(ORIGIN_META, stored_origin)
    elif origin is not None and origin != stored_origin:
        store.close()
        raise ValueError(
            f"{data_dir} holds the log {stored_origin!r}; it cannot be reopened as {origin!r}"
        )
    try:
        signer, verifier = _keys(
            data_dir / "keys",
            stored_origin,
            signed=store.latest_checkpoint() is not None,
            writer=create,
        )
    except StoreError:
        store.close()
        raise
    log = Log(store, signer, verifier, stored_origin, time.time_ns)
    return Ledger(data_dir, store, log)


class DataDirBusy(ValueError):
    """Another server is the writer of this data directory."""


LOCK_FILE = "server.lock"


@contextmanager
def writer_lock(data_dir: Path, holder: str = "auditmesh server") -> Iterator[None]:
    """Hold DIR/server.lock for as long as this process appends to the log: the log has one
    sequencer, and a second one (a second server on the same directory) would only find its
    tree out of date at its first write. An advisory lock (flock), so the kernel drops it
    when the process dies, however it dies. The file names the holder (pid and `holder`),
    for the message of whoever finds it taken."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirBusy(
                f"{data_dir} is in use by {lock_holder(data_dir)}; stop it (or wait for it), "
                "or give this one another --data directory"
            ) from None
        except OSError as exc:  # e.g. ENOLCK: a network file system without a lock manager
            raise DataDirBusy(
                f"cannot lock {path}: {exc.strerror or exc}; the data directory needs a local "
                "file system (or one with working flock)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(data_dir: Path) -> str:
    """Who holds (or last held) DIR/server.lock, in words: `auditmesh server (pid 12)`."""
    try:
        text = (Path(data_dir) / LOCK_FILE).read_text(errors="replace").strip()[:200]
    except OSError:
        text = ""
    pid, _, holder = text.partition(" ")
    if not pid:
        return "another process (pid unknown)"
    return f"{holder or 'an auditmesh server'} (pid {pid})"  # older lock files: the pid only


def open_reader(data_dir: Path) -> StoreReader:
    """The ledger in `data_dir`, read-only, for a verify worker process (a partial of this
    is the picklable `open_reader` of `ledger.verify.verify_log`)."""
    return StoreReader(SQLiteStore(Path(data_dir), create=False, scan=True))


def _keys(
    key_dir: Path, name: str, *, signed: bool, writer: bool
) -> tuple[Signer | None, Verifier]:
    """The log's signer and verifier. A key pair is made only for a log that has signed
    nothing yet: a log whose key is lost must not go on under a new one, which no auditor
    who pinned the old key could connect to what it signed before. A reader (`writer`
    False) never writes keys, and needs only the verifier key."""
    skey_path, vkey_path = key_dir / "log.skey", key_dir / "log.vkey"
    if not skey_path.exists():
        if signed and writer:
            raise StoreError(
                f"{skey_path} is missing, and this log has signed checkpoints: restore the key "
                "from your backup. A new key would sign checkpoints that no one who trusts the "
                "old one could connect to those before"
            )
        if not writer:
            if not vkey_path.exists():
                raise StoreError(f"{vkey_path} is missing: the log's verifier key is needed")
            return None, Verifier.from_vkey(vkey_path.read_text().strip())
        key_dir.mkdir(parents=True, exist_ok=True)
        skey, vkey = generate_key(name)
        fd = os.open(skey_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(skey + "\n")
            f.flush()
            os.fsync(f.fileno())
        vkey_path.write_text(vkey + "\n")
    signer = Signer.from_skey(skey_path.read_text().strip())
    verifier = Verifier.from_vkey(vkey_path.read_text().strip())
    return signer, verifier
