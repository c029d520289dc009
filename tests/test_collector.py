"""Collector: group commit from many threads, checkpoints on time and on stop, failures reported."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, cast

import msgspec
import pytest

from auditmesh.collector import (
    Collector,
    CollectorStopped,
    CommitFailed,
    EventConflict,
    Indices,
    entry_of,
)
from auditmesh.datadir import Ledger
from auditmesh.events import canonical_bytes
from auditmesh.ledger.log import Entry
from auditmesh.ledger.verify import verify_log
from auditmesh.store.base import StoreReader, event_key
from tests.conftest import generate


def test_concurrent_submitters_get_consecutive_unique_indices(ledger: Ledger) -> None:
    events = generate(2000)
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    results: list[list[int]] = [[] for _ in range(8)]

    def submit(worker: int) -> None:
        for start in range(worker * 250, (worker + 1) * 250, 50):
            results[worker].extend(collector.submit(events[start : start + 50]).result())

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    collector.stop()
    everything = sorted(i for r in results for i in r)
    assert everything == list(range(2000))
    latest = ledger.log.latest_checkpoint()
    assert latest is not None and latest.size == 2000  # signed on stop


def test_checkpoint_waiters_are_answered(ledger: Ledger) -> None:
    collector = Collector(ledger.log, checkpoint_interval_ns=50_000_000)
    collector.start()
    try:
        indices = collector.submit(generate(10)).result(timeout=5)
        covering = collector.checkpoint_covering(indices[-1] + 1).result(timeout=5)
        assert covering.size >= 10
    finally:
        collector.stop()


def test_submit_after_stop_is_refused(ledger: Ledger) -> None:
    collector = Collector(ledger.log)
    collector.start()
    collector.stop()
    with pytest.raises(CollectorStopped):
        collector.submit(generate(1)).result(timeout=1)


def test_storage_failure_reaches_every_caller_and_stops_intake(ledger: Ledger) -> None:
    def broken_write(*args: object) -> None:
        raise OSError(28, "No space left on device")

    ledger.store.write = broken_write  # type: ignore[method-assign,assignment]
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    try:
        failed: Future[Indices] = collector.submit(generate(5))
        with pytest.raises(OSError, match="No space left"):
            failed.result(timeout=5)
        with pytest.raises(CollectorStopped):
            collector.submit(generate(1, seed=3)).result(timeout=1)
        assert ledger.log.size == 0
    finally:
        collector.stop()


def test_a_commit_the_store_could_not_make_fails_that_batch_only(ledger: Ledger) -> None:
    """Another process holds the database's write lock past the busy timeout: the batch is
    refused as CommitFailed (nothing stored, send it again), and the collector goes on."""
    ledger.store._writer.execute("PRAGMA busy_timeout=100")  # not 10 s, for the test
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    other = sqlite3.connect(ledger.store.path, isolation_level=None)
    try:
        collector.submit(generate(3)).result(timeout=5)
        other.execute("BEGIN IMMEDIATE")  # e.g. the sqlite3 shell, mid-transaction
        with pytest.raises(CommitFailed, match="database is locked.*send it again"):
            collector.submit(generate(5, seed=3)).result(timeout=5)
        other.execute("ROLLBACK")
        again = collector.submit(generate(5, seed=3)).result(timeout=5)
        assert list(again) == [3, 4, 5, 6, 7] and ledger.log.size == 8
    finally:
        other.close()
        collector.stop()
    assert ledger.log.latest_checkpoint() is not None  # signed on stop, as ever
    assert verify_log(StoreReader(ledger.store), ledger.log.verifier).size == 8


def test_an_id_reused_for_other_content_refuses_its_batch_only(ledger: Ledger) -> None:
    """A duplicate is the same event sent again; the same id with other content is refused
    (its whole batch, naming the position) and the log keeps what it acknowledged."""
    first, second, third = generate(3, seed=9)
    changed = msgspec.structs.replace(first, outcome="failure")  # same id, other content
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    try:
        assert list(collector.submit([first]).result(timeout=5)) == [0]
        assert list(collector.submit([second, first]).result(timeout=5)) == [1, 0]  # resent
        conflicting = collector.submit([third, changed])
        with pytest.raises(EventConflict, match="line 2: .*in the log already.*entry 0"):
            conflicting.result(timeout=5)
        other = msgspec.structs.replace(third, outcome="failure")
        with pytest.raises(EventConflict, match="line 2: .*an earlier event of the same batch"):
            collector.submit([third, other]).result(timeout=5)
        assert list(collector.submit([third]).result(timeout=5)) == [2]
    finally:
        collector.stop()
    assert ledger.store.event_by_id(event_key(first.id)) is not None
    stored = ledger.store.event_by_id(event_key(first.id))
    assert stored is not None and stored.data == canonical_bytes(first)
    assert ledger.log.size == 3


def test_a_receiver_can_leave_out_the_conflicting_entries_alone(ledger: Ledger) -> None:
    events = generate(4, seed=13)
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    try:
        collector.submit(events[:2]).result(timeout=5)
        batch = [
            events[2],
            msgspec.structs.replace(events[0], outcome="failure"),
            events[1],
            msgspec.structs.replace(events[1], outcome="failure"),
            events[3],
        ]
        left_out = asyncio.run(collector.submit_leaving_out_conflicts([entry_of(e) for e in batch]))
        assert left_out == [1, 3]
    finally:
        collector.stop()
    assert ledger.log.size == 4


class _Gate:
    """Holds the sequencer inside its next store write until `open()`: what it queues
    meanwhile is taken as one group afterwards."""

    def __init__(self, ledger: Ledger) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        write = ledger.store.write

        def gated(*args: Any) -> None:
            self.entered.set()
            self._open.wait(10)
            write(*args)

        ledger.store.write = gated  # type: ignore[method-assign,assignment]

    def open(self) -> None:
        self._open.set()


def test_a_caller_that_stops_waiting_never_stops_the_sequencer(ledger: Ledger) -> None:
    """asyncio.wrap_future cancels the future of a caller that gives up (a timeout, a gRPC
    deadline): the sequencer drops a job cancelled while queued, and skips a cancelled
    checkpoint waiter, instead of dying on InvalidStateError with every later write hung."""
    gate = _Gate(ledger)
    collector = Collector(ledger.log, checkpoint_interval_ns=50_000_000)
    collector.start()
    try:
        first = collector.submit(generate(2, seed=1))
        assert gate.entered.wait(5)
        given_up = collector.submit(generate(2, seed=2))
        assert given_up.cancel()  # still queued: cancelled
        waiter = collector.checkpoint_covering(2)
        assert waiter.cancel()
        gate.open()
        assert list(first.result(timeout=5)) == [0, 1]
        time.sleep(0.3)  # checkpoints signed meanwhile, the cancelled waiter skipped
        assert list(collector.submit(generate(2, seed=3)).result(timeout=5)) == [2, 3]
        assert collector.failure is None
    finally:
        collector.stop()
    assert ledger.log.size == 4  # the cancelled batch was never stored


def test_a_conflict_refuses_only_its_own_batch_when_batches_commit_together(
    ledger: Ledger,
) -> None:
    stored, fresh, other = generate(3, seed=4)
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    try:
        collector.submit([stored]).result(timeout=5)
        gate = _Gate(ledger)
        blocker = collector.submit([other])
        assert gate.entered.wait(5)
        # grouped: A reuses the stored id; B's event shares its id with nothing stored
        a = collector.submit([msgspec.structs.replace(stored, outcome="failure"), fresh])
        b = collector.submit([msgspec.structs.replace(fresh, reporter="relay-b")])
        gate.open()
        blocker.result(timeout=5)
        with pytest.raises(EventConflict, match="entry 0"):
            a.result(timeout=5)
        assert list(b.result(timeout=5)) == [2]  # B is stored: A's copy never was
    finally:
        collector.stop()


def test_every_conflict_of_a_batch_is_named_at_once(ledger: Ledger) -> None:
    events = generate(40, seed=6)
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    calls = 0
    submit = collector.submit_entries

    def counted(entries: list[Entry]) -> Future[Indices]:
        nonlocal calls
        calls += 1
        return submit(entries)

    collector.submit_entries = counted  # type: ignore[method-assign]
    try:
        collector.submit(events[:20]).result(timeout=5)
        changed = [msgspec.structs.replace(e, outcome="unknown") for e in events[:20]]
        batch = [entry_of(e) for pair in zip(changed, events[20:], strict=True) for e in pair]
        left_out = asyncio.run(collector.submit_leaving_out_conflicts(batch))
        assert left_out == list(range(0, 40, 2))
        assert calls == 3  # the first batch, the refused one, the rest: not one per conflict
    finally:
        collector.stop()
    assert ledger.log.size == 40


def test_a_new_log_signs_its_first_checkpoint_as_the_collector_starts(ledger: Ledger) -> None:
    """C2SP tlog-tiles: the checkpoint endpoint MUST be served; a new log had none to serve
    until its first interval ended (here the interval is 1,000 s)."""
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    assert ledger.log.latest_checkpoint() is None
    collector.start()
    try:
        first = collector.checkpoint_covering(0).result(timeout=10)
        assert first.size == 0
        assert ledger.log.open_checkpoint(first.note).size == 0
        collector.submit(generate(3)).result()
        assert ledger.log.latest_checkpoint() == first  # the interval still rules after it
    finally:
        collector.stop()
    last = ledger.log.latest_checkpoint()
    assert last is not None and last.size == 3
    assert verify_log(StoreReader(ledger.store), ledger.log.verifier).size == 3


def test_a_checkpoint_signed_while_a_waiter_registers_still_answers_it(ledger: Ledger) -> None:
    """checkpoint_covering read the latest checkpoint, then registered its waiter: a
    checkpoint signed in between (its waiters already answered) left that waiter for the
    next one, here 1,000 s away."""
    waiters_passed = threading.Event()
    looked: list[bool] = []

    class Log:  # the ledger's log; the waiter's first look is held until the signing is over
        def __getattr__(self, name: str) -> Any:
            return getattr(ledger.log, name)

        def latest_checkpoint(self) -> Any:
            latest = ledger.log.latest_checkpoint()
            if threading.current_thread().name == "waiter" and not looked:
                looked.append(True)
                assert waiters_passed.wait(10)
            return latest

    class Lock:  # the collector's waiters lock, telling when the sequencer let go of it
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def __enter__(self) -> None:
            self._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self._lock.release()
            if threading.current_thread().name == "auditmesh-sequencer":
                waiters_passed.set()

    collector = Collector(cast(Any, Log()), checkpoint_interval_ns=10**12)
    collector._waiters_lock = cast(Any, Lock())
    asked: list[Future[Any]] = []
    waiter = threading.Thread(
        target=lambda: asked.append(collector.checkpoint_covering(0)), name="waiter"
    )
    waiter.start()  # reads no checkpoint yet, and waits
    collector.start()  # signs the first one
    try:
        waiter.join(10)
        assert asked[0].result(timeout=5).size == 0
    finally:
        collector.stop()
