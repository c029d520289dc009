"""The collector: admits validated events into the log, answering only after commit.

Producers (the HTTP API, ingest adapters, the server's own audit records) call `submit`
from any thread or `submit_async` from the event loop. One sequencer thread drains the
queue, appends everything waiting in one durable transaction (group commit), then
resolves each caller's future with its indices. The same thread signs a checkpoint at
most every `checkpoint_interval_ns` while the log grows, and once more on `stop`; a log
with none signs its first as the thread starts.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from auditmesh.events import AuditEvent, EventError, canonical_bytes, checked_size
from auditmesh.ledger.log import ConflictingEntries, Entry, Log, StoredCheckpoint
from auditmesh.store.base import StoreUnavailable, columns_of, event_key

MAX_GROUP_EVENTS = 50_000


class Indices(list[int]):
    """The ledger index of each submitted event, and `fresh_from`: the log's size before
    the append that took them, so an index below it is an event stored before (dropped as
    a duplicate by its id)."""

    def __init__(self, indices: list[int], *, fresh_from: int) -> None:
        super().__init__(indices)
        self.fresh_from = fresh_from


_Job = tuple[list[Entry], "Future[Indices]"]


def entry_of(event: AuditEvent) -> Entry:
    return Entry(event_key(event.id), canonical_bytes(event), columns_of(event))


class EventConflict(EventError):
    """Events reuse the id of others (stored, or earlier in their batch) with other content:
    the batch was refused whole, nothing of it stored; `line` is the first one's position
    (from 1), `lines` all of theirs."""

    def __init__(self, message: str, *, lines: Sequence[int]) -> None:
        super().__init__(message, line=lines[0])
        self.lines = tuple(lines)


class CollectorUnavailable(RuntimeError):
    """Events were not taken, and none of them is in the log; the message says why."""


class CollectorStopped(CollectorUnavailable):
    """The collector is shutting down (or its storage failed for good): no more events."""


class CommitFailed(CollectorUnavailable):
    """The storage could not commit this batch for now (`StoreUnavailable`): nothing of it
    was kept, the collector goes on, and the same batch may be sent again."""


class Collector:
    def __init__(
        self,
        log: Log,
        *,
        checkpoint_interval_ns: int = 1_000_000_000,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.log = log
        self._interval = checkpoint_interval_ns
        self._monotonic_ns = monotonic_ns
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="auditmesh-sequencer")
        self._stopping = False
        self._checkpoint_waiters: list[tuple[int, Future[StoredCheckpoint]]] = []
        self._waiters_lock = threading.Lock()
        self.failure: BaseException | None = None
        self._commit_observers: list[Callable[[list[Entry]], None]] = []

    def observe_commits(self, callback: Callable[[list[Entry]], None]) -> None:
        """Have `callback` see, on the sequencer thread, the entries each commit added (ids
        already in the log left out), after they are durable and before callers hear back.
        Used by `server.metrics`; a failing observer never fails the commit."""
        self._commit_observers.append(callback)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what was submitted, sign a last checkpoint, and end the thread."""
        if self._stopping:
            return
        self._stopping = True
        self._queue.put(None)
        self._thread.join()

    @property
    def checkpoint_interval_s(self) -> float:
        """How often a checkpoint is signed while the log grows."""
        return self._interval / 1e9

    def submit(self, events: Sequence[AuditEvent]) -> Future[Indices]:
        """Queue the events; raises EventError (naming the position, from 1) at once for one
        too large to be a ledger entry, and nothing of the batch is queued."""
        entries = [entry_of(e) for e in events]
        for position, entry in enumerate(entries, start=1):
            checked_size(entry.data, line=position)
        return self.submit_entries(entries)

    def submit_entries(self, entries: list[Entry]) -> Future[Indices]:
        future: Future[Indices] = Future()
        if self._stopping or self.failure is not None:
            why = (
                "it is stopping" if self.failure is None else f"its storage failed: {self.failure}"
            )
            future.set_exception(CollectorStopped(f"the collector takes no more events: {why}"))
            return future
        self._queue.put((entries, future))
        return future

    async def submit_async(self, events: Sequence[AuditEvent]) -> Indices:
        return await asyncio.wrap_future(self.submit(events))

    async def submit_leaving_out_conflicts(self, entries: list[Entry]) -> list[int]:
        """Commit `entries` but any that reuses a stored id with other content (an
        `EventConflict`), for a receiver that rejects records one by one (OTLP partial
        success); returns the positions left out."""
        left_out: list[int] = []
        positions = list(range(len(entries)))
        while positions:  # twice at most: the conflicts of a batch are found all at once
            try:
                await asyncio.wrap_future(self.submit_entries([entries[p] for p in positions]))
                break
            except EventConflict as exc:
                refused = {positions[line - 1] for line in exc.lines}
                left_out.extend(refused)
                positions = [p for p in positions if p not in refused]
        return sorted(left_out)

    def checkpoint_covering(self, size: int) -> Future[StoredCheckpoint]:
        """A future for the first signed checkpoint whose size is at least `size`."""
        future: Future[StoredCheckpoint] = Future()
        latest = self.log.latest_checkpoint()
        if latest is not None and latest.size >= size:
            future.set_result(latest)
            return future
        with self._waiters_lock:
            # again under the lock: a checkpoint signed since the look above has answered
            # its waiters already (`_checkpoint` reads the latest, then takes the lock)
            latest = self.log.latest_checkpoint()
            if latest is not None and latest.size >= size:
                future.set_result(latest)
                return future
            self._checkpoint_waiters.append((size, future))
        return future

    # -- the sequencer thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sequence()
        except BaseException as exc:  # a defect: refuse what comes, never hang it silently
            self.failure = exc
            raise

    def _sequence(self) -> None:
        if self.log.latest_checkpoint() is None:
            # C2SP tlog-tiles: the checkpoint endpoint MUST be served; a new log signs one at
            # once (of size 0, or of what an unsigned log holds), not after its first interval
            self._checkpoint()
        last_checkpoint = self._monotonic_ns()
        stop = False
        while not stop:
            due = last_checkpoint + self._interval - self._monotonic_ns()
            jobs, stop = self._take(timeout=max(due, 0) / 1e9)
            if jobs:
                self._commit(jobs)
            if stop or self._monotonic_ns() - last_checkpoint >= self._interval:
                self._checkpoint()
                last_checkpoint = self._monotonic_ns()

    def _take(self, timeout: float) -> tuple[list[_Job], bool]:
        jobs: list[_Job] = []
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return jobs, False
        if first is None:
            return jobs, True
        count = 0
        job: _Job | None = first
        while job is not None:
            # Running from here: a caller that stops waiting (asyncio.wrap_future cancels the
            # future) can no longer cancel it, and a job cancelled before is dropped.
            if job[1].set_running_or_notify_cancel():
                jobs.append(job)
                count += len(job[0])
            if count >= MAX_GROUP_EVENTS:
                break
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
        return jobs, False

    def _commit(self, jobs: list[_Job]) -> None:
        entries = [entry for batch, _ in jobs for entry in batch]
        start = self.log.size
        try:
            indices = self.log.append(entries)
        except ConflictingEntries as exc:
            if len(jobs) > 1:  # one at a time: each then conflicts only with what is stored
                for job in jobs:  # (an earlier job's included) or with itself
                    self._commit([job])
            else:
                self._refuse(jobs[0], exc.conflicts)
            return
        except StoreUnavailable as exc:  # for now: these callers hear why, the next may pass
            failed = CommitFailed(f"{exc}; nothing of the batch was stored: send it again")
            for _, future in jobs:
                future.set_exception(failed)
            try:
                self.log.reload_size()
            except BaseException as lost:  # the storage cannot even be read: stop taking
                self.failure = lost
            return
        except BaseException as exc:  # nothing was committed: every caller hears why
            self.failure = exc
            for _, future in jobs:
                future.set_exception(exc)
            return
        if self._commit_observers:
            self._notify(entries, indices, start)
        offset = 0
        for batch, future in jobs:
            future.set_result(Indices(indices[offset : offset + len(batch)], fresh_from=start))
            offset += len(batch)

    @staticmethod
    def _refuse(job: _Job, conflicts: dict[int, int | None]) -> None:
        """Refuse one job for its `conflicts` (position → the stored entry's index, or None:
        an earlier entry of the same job)."""
        lines = sorted(conflicts)
        where = conflicts[lines[0]]
        holder = "an earlier event of the same batch" if where is None else f"entry {where}"
        job[1].set_exception(
            EventConflict(
                "an event with this id is in the log already, with other content "
                f"({holder}): an event id names one event, send this one under a new id",
                lines=[position + 1 for position in lines],
            )
        )

    def _notify(self, entries: list[Entry], indices: list[int], start: int) -> None:
        added: list[Entry] = []
        for entry, index in zip(entries, indices, strict=True):
            if index == start + len(added):  # first sight of a new index: a fresh entry
                added.append(entry)
        for observer in self._commit_observers:
            try:
                observer(added)
            except Exception:  # counting must never cost an acknowledged commit
                pass

    def _checkpoint(self) -> None:
        try:
            self.log.checkpoint()
        except StoreUnavailable:  # not stored this time: the next interval signs it
            return
        except BaseException as exc:  # e.g. the stored tree no longer consistent: stop
            self.failure = exc
            return
        latest = self.log.latest_checkpoint()
        if latest is None:
            return
        with self._waiters_lock:
            waiting = self._checkpoint_waiters
            self._checkpoint_waiters = [(s, f) for s, f in waiting if s > latest.size]
        for size, future in waiting:
            # a waiter that gave up (cancelled) is skipped, not answered
            if size <= latest.size and future.set_running_or_notify_cancel():
                future.set_result(latest)
