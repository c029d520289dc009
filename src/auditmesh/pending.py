"""Audit events made beside the server: queued as files, taken into the ledger by its writer.

`auditmesh ca token` and `ca issue` act on the CA's files, not through the server, yet an
issuance is an audit event (issue 3) like a join's. The log has one sequencer (the server's,
`datadir.writer_lock`), so such an event is first written whole to a file of its own,

    DIR/pending/<event id>.json     the event's canonical bytes (fsync, then rename)

and taken from there by whoever holds the lock: the command itself when no server runs (it
appends at once, and says at which index), else the running server, which looks every
second (`PendingWatcher`) and once more as it stops; the command waits a few seconds for
it (`take_or_wait`), so that an event queued while another process held the lock (another
`ca` command, a server stopping) is not left behind. A file is removed only after its event
is durable in the log; a crash in between takes it again, and the event id makes that second
append a no-op (DESIGN.md: the id is the dedup key).

A file that cannot be appended is renamed `*.refused`, with the reason and what to do in
`*.refused.why` beside it, and never lost: one that is not an event, or whose id the log
holds already for another event (`EventConflict`). A file that cannot be read now stays, and
is tried again. Whatever is in DIR/pending becomes an attested event, so the folder must be
writable by its owner only (the writer refuses to take from it otherwise).
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from auditmesh.collector import Collector, EventConflict, Indices
from auditmesh.datadir import DataDirBusy, open_ledger, writer_lock
from auditmesh.events import (
    MAX_EVENT_BYTES,
    AuditEvent,
    EventError,
    canonical_bytes,
    decode_event,
)
from auditmesh.fsutil import fsync_dir, write_atomic
from auditmesh.store.base import event_key
from auditmesh.store.sqlite import DB_NAME, SQLiteStore

PENDING_DIR = "pending"
SUFFIX = ".json"
REFUSED_SUFFIX = ".refused"
Submit = Callable[[Sequence[AuditEvent]], "Future[Indices]"]


class UnsafePendingDir(PermissionError):
    """DIR/pending can be written by others than its owner: nothing is queued or taken."""


class NoLedgerYet(Exception):
    """The data directory has no log yet: the first server creates it (with its --origin)
    and takes what is queued."""


def pending_dir(data_dir: Path) -> Path:
    return Path(data_dir) / PENDING_DIR


def queue_event(data_dir: Path, event: AuditEvent) -> Path:
    """Write `event` to DIR/pending durably, whole or not at all (fsutil.write_atomic)."""
    folder = pending_dir(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder)
    final = folder / f"{event.id}{SUFFIX}"
    write_atomic(final, canonical_bytes(event), mode=0o600)
    return final


def _check_private(folder: Path) -> None:
    """Anything in `folder` is appended as an attested event: refuse one that others than
    its owner can write to."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o022:
        raise UnsafePendingDir(
            f"{folder} can be written by other users (mode {mode:o}), and whatever is put "
            f"there is appended to the log as an attested audit event: run `chmod 700 {folder}`"
        )


@dataclass(frozen=True, slots=True)
class Absorbed:
    indices: dict[str, int]  # event id → its ledger index
    refused: tuple[Path, ...]  # files set aside (renamed *.refused, the reason in *.why)
    reasons: tuple[str, ...] = ()  # why, one for each of `refused`
    kept: tuple[str, ...] = ()  # files that could not be read now: left, tried again


def absorb(data_dir: Path, submit: Submit) -> Absorbed:
    """Append every queued event (in file-name order: UUIDv7 ids sort by time) and remove
    its file once the log holds it. A file that cannot be appended (no event; an id the log
    holds for another event) is set aside, and the rest still goes. Raises what `submit`
    raises otherwise (CommitFailed, CollectorStopped: nothing is removed then), and
    UnsafePendingDir."""
    folder = pending_dir(data_dir)
    try:
        _check_private(folder)
        files = sorted(
            p for p in folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")
        )  # `.<name>.json.<random>.tmp`: a write_atomic not finished (or cut by a crash)
    except FileNotFoundError:
        return Absorbed({}, ())
    events: list[AuditEvent] = []
    taken: list[Path] = []
    refused: list[tuple[Path, str]] = []
    kept: list[str] = []
    for path in files:
        try:
            size = path.stat().st_size
            data = b"" if size > MAX_EVENT_BYTES else path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:  # not the file's fault (e.g. permissions): it stays
            kept.append(f"cannot read {path} ({exc.strerror or exc})")
            continue
        try:
            if size > MAX_EVENT_BYTES:
                raise EventError(f"{size} bytes; an event is at most {MAX_EVENT_BYTES}")
            events.append(decode_event(data))
        except (EventError, UnicodeDecodeError, RecursionError) as exc:
            refused.append(_refuse(path, _not_an_event(path, str(exc) or type(exc).__name__)))
            continue
        taken.append(path)
    indices: list[int] = []
    while events:
        try:
            indices = submit(events).result()  # durable once this returns
            break
        except EventError as exc:  # one file's event is refused: set it aside, send the rest
            line = exc.lines[0] if isinstance(exc, EventConflict) else exc.line
            if line is None or not 1 <= line <= len(events):
                raise
            position = line - 1
            why = _refused_by_the_log(taken[position], events[position], exc)
            refused.append(_refuse(taken.pop(position), why))
            del events[position]
    for path in taken:
        path.unlink(missing_ok=True)
    if taken or refused:
        fsync_dir(folder)
    return Absorbed(
        {e.id: i for e, i in zip(events, indices, strict=True)},
        tuple(path for path, _ in refused),
        tuple(why for _, why in refused),
        tuple(kept),
    )


def _not_an_event(path: Path, reason: str) -> str:
    return (
        f"{path.name} is not an audit event ({reason}); it was not appended. Fix it and "
        f"rename it back to {path.name}, or delete it."
    )


def _refused_by_the_log(path: Path, event: AuditEvent, exc: EventError) -> str:
    reason = re.sub(r"^line \d+: ", "", str(exc))
    if isinstance(exc, EventConflict):
        return (
            f"{path.name} holds event {event.id}, but the log holds another event under "
            f"this id ({reason}); it was not appended. If it records the same action as that "
            f"entry, delete it; if another, give it a new id (a UUIDv7) and rename it back to "
            f"{path.name}."
        )
    return _not_an_event(path, reason)


def _refuse(path: Path, why: str) -> tuple[Path, str]:
    """Rename `path` to `*.refused` (never over an earlier one), the reason beside it."""
    target = path.with_name(path.name + REFUSED_SUFFIX)
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.{number}{REFUSED_SUFFIX}")
    write_atomic(target.with_name(target.name + ".why"), f"{why}\n".encode(), mode=0o600)
    os.replace(path, target)
    return target, why


def take_now(data_dir: Path) -> Absorbed | None:
    """Append what is queued now, when no server holds the ledger (None: a process does,
    the running server, which takes it within a second, or another `ca` command). Raises
    NoLedgerYet when DIR has no log: the first server makes it, with the origin it is
    given, and takes what is queued."""
    data_dir = Path(data_dir)
    try:
        with writer_lock(data_dir, "auditmesh ca (appending its audit event)"):
            if not (data_dir / DB_NAME).exists():
                raise NoLedgerYet(f"{data_dir} has no log yet")
            ledger = open_ledger(data_dir)
            try:
                collector = Collector(ledger.log)
                collector.start()
                try:
                    return absorb(data_dir, collector.submit)
                finally:
                    collector.stop()  # signs a checkpoint of what was appended
            finally:
                ledger.close()
    except DataDirBusy:
        return None


def take_or_wait(
    data_dir: Path, event_id: str, *, wait_s: float = 5.0, poll_s: float = 0.1
) -> int | None:
    """The ledger index of the queued event `event_id`: appended now (`take_now`), or, while
    another process holds the ledger, taken by it within `wait_s` (the running server looks
    every second; another `ca` command holds the lock for a moment only). None: still
    queued, or set aside. Raises what `take_now` raises."""
    path = pending_dir(data_dir) / f"{event_id}{SUFFIX}"
    deadline = time.monotonic() + wait_s
    while True:
        taken = take_now(data_dir)
        if taken is not None and event_id in taken.indices:
            return taken.indices[event_id]
        if not path.exists():  # taken by the lock's holder, or set aside
            return _index_of(data_dir, event_id)
        if taken is not None or time.monotonic() >= deadline:
            return None  # we held the lock and the file stayed (unreadable), or waited enough
        time.sleep(poll_s)


def _index_of(data_dir: Path, event_id: str) -> int | None:
    store = SQLiteStore(Path(data_dir), create=False)
    try:
        return store.indices_of([event_key(event_id)]).get(event_key(event_id))
    finally:
        store.close()


class PendingWatcher:
    """The server's side: absorb DIR/pending now, every `interval_s`, and once more on `stop`
    (before the collector stops). A failure (the collector cannot commit for now, the folder
    unreadable) is reported once, not every round, and tried again; so is its end."""

    def __init__(
        self,
        data_dir: Path,
        submit: Submit,
        *,
        interval_s: float = 1.0,
        report: Callable[[str], None] = print,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._submit = submit
        self._interval = interval_s
        self._report = report
        self._failing: str | None = None  # the failure reported last, until it ends
        self._kept: set[str] = set()  # unreadable files reported, while they stay
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auditmesh-pending", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Take what was queued since the last round, then end the thread."""
        self._stopped.set()
        if self._thread.ident is not None:  # started
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.once()
            if self._stopped.wait(self._interval):
                self.once()  # queued in the last interval: taken while the collector runs
                return

    def once(self) -> None:
        folder = pending_dir(self._data_dir)
        try:
            absorbed = absorb(self._data_dir, self._submit)
        except Exception as exc:  # noqa: BLE001 — kept on disk; the next round tries again
            why = str(exc) or type(exc).__name__
            if why != self._failing:
                self._report(
                    f"auditmesh server: cannot take the audit events queued in {folder} into "
                    f"the log for now: {why}. They stay queued, and are tried again every "
                    f"{self._interval:g} s (this is said again only if the reason changes)"
                )
                self._failing = why
            return
        if self._failing is not None:
            self._report(f"auditmesh server: queued audit events in {folder} are taken again")
            self._failing = None
        if absorbed.indices:
            self._report(
                f"auditmesh server: took {len(absorbed.indices)} queued audit event(s) from "
                f"{folder}"
            )
        for path, why in zip(absorbed.refused, absorbed.reasons, strict=True):
            self._report(f"auditmesh server: set aside {path}: {why} (also in {path}.why)")
        for line in sorted(set(absorbed.kept) - self._kept):
            self._report(
                f"auditmesh server: {line}; it stays queued and is tried again every "
                f"{self._interval:g} s: the server's user must be able to read it"
            )
        self._kept = set(absorbed.kept)
