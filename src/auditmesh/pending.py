"""Audit events made beside the server: queued as files, taken into the ledger by its writer.

`auditmesh ca token` and `ca issue` act on the CA's files, not through the server, yet an
issuance is an audit event (issue 3) like a join's. The log has one sequencer (the server's,
`datadir.writer_lock`), so such an event is first written whole to a file of its own,

    DIR/pending/<event id>.json     the event's canonical bytes (fsync, then rename)

and taken from there by whoever holds the lock: the command itself when no server runs (it
appends at once, and says at which index), else the running server, which looks every
second (`PendingWatcher`). A file is removed only after its event is durable in the log;
a crash in between takes it again, and the event id makes that second append a no-op
(DESIGN.md: the id is the dedup key). A file that is not an event is renamed `*.refused`,
with the reason beside it, and never lost.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from auditmesh.collector import Collector, Indices
from auditmesh.datadir import DataDirBusy, open_ledger, writer_lock
from auditmesh.events import AuditEvent, EventError, canonical_bytes, decode_event
from auditmesh.fsutil import fsync_dir, write_atomic

PENDING_DIR = "pending"
SUFFIX = ".json"
REFUSED_SUFFIX = ".refused"
Submit = Callable[[Sequence[AuditEvent]], "Future[Indices]"]


def pending_dir(data_dir: Path) -> Path:
    return Path(data_dir) / PENDING_DIR


def queue_event(data_dir: Path, event: AuditEvent) -> Path:
    """Write `event` to DIR/pending durably, whole or not at all (fsutil.write_atomic)."""
    folder = pending_dir(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = folder / f"{event.id}{SUFFIX}"
    write_atomic(final, canonical_bytes(event), mode=0o600)
    return final


@dataclass(frozen=True, slots=True)
class Absorbed:
    indices: dict[str, int]  # event id → its ledger index
    refused: tuple[Path, ...]  # files that held no event (renamed *.refused)


def absorb(data_dir: Path, submit: Submit) -> Absorbed:
    """Append every queued event (in file-name order: UUIDv7 ids sort by time) and remove
    its file once the log holds it. Raises what `submit` raises (nothing is removed then)."""
    folder = pending_dir(data_dir)
    try:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return Absorbed({}, ())
    events: list[AuditEvent] = []
    taken: list[Path] = []
    refused: list[Path] = []
    for path in files:
        try:
            events.append(decode_event(path.read_bytes()))
            taken.append(path)
        except (EventError, OSError, UnicodeDecodeError) as exc:
            refused.append(_refuse(path, str(exc)))
    if not events:
        return Absorbed({}, tuple(refused))
    indices = submit(events).result()  # durable once this returns
    for path in taken:
        path.unlink(missing_ok=True)
    fsync_dir(folder)
    return Absorbed({e.id: i for e, i in zip(events, indices, strict=True)}, tuple(refused))


def take_now(data_dir: Path) -> Absorbed | None:
    """Append what is queued now, when no server holds the ledger (None: one does, and takes
    it within a second)."""
    try:
        with writer_lock(Path(data_dir)):
            ledger = open_ledger(Path(data_dir))
            collector = Collector(ledger.log)
            collector.start()
            try:
                return absorb(data_dir, collector.submit)
            finally:
                collector.stop()  # signs a checkpoint of what was appended
                ledger.close()
    except DataDirBusy:
        return None


def _refuse(path: Path, reason: str) -> Path:
    target = path.with_name(path.name + REFUSED_SUFFIX)
    os.replace(path, target)
    target.with_name(target.name + ".why").write_text(
        f"{path.name} is not an audit event ({reason}); it was not appended. Fix it and "
        f"rename it back to {path.name}, or delete it.\n"
    )
    return target


class PendingWatcher:
    """The server's side: absorb DIR/pending now and every `interval_s` until `stop`.
    A failure (the collector cannot commit for now) is reported and tried again later."""

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
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auditmesh-pending", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.once()
            if self._stopped.wait(self._interval):
                return

    def once(self) -> None:
        try:
            absorbed = absorb(self._data_dir, self._submit)
        except Exception as exc:  # noqa: BLE001 — kept on disk; the next round tries again
            self._report(f"auditmesh server: queued audit events not taken yet: {exc}")
            return
        if absorbed.indices:
            self._report(
                f"auditmesh server: took {len(absorbed.indices)} queued audit event(s) from "
                f"{pending_dir(self._data_dir)}"
            )
        for path in absorbed.refused:
            self._report(f"auditmesh server: {path} is not an audit event; see {path}.why")
