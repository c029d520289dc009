"""Shared fixtures: real ledgers on disk filled with generated traffic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from auditmesh.collector import Collector, entry_of
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent
from auditmesh.simulate import TrafficGenerator

START_NS = 1_764_300_000_000_000_000

# No test asserts a speed, and hypothesis's per-example deadline (200 ms) is one: on a busy
# CI machine a file write and a policy load took 372 ms once and failed the run.
settings.register_profile("auditmesh", deadline=None)
settings.load_profile("auditmesh")


def generate(count: int, seed: int = 7) -> list[AuditEvent]:
    return list(TrafficGenerator(seed=seed, start_ns=START_NS).events(count))


def fill(ledger: Ledger, events: list[AuditEvent], checkpoint_every: int = 0) -> None:
    """Append in batches, signing a checkpoint after every `checkpoint_every` events."""
    step = checkpoint_every or len(events)
    for start in range(0, len(events), step):
        ledger.log.append([entry_of(e) for e in events[start : start + step]])
        ledger.log.checkpoint()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    yield opened
    opened.close()


@pytest.fixture
def collector(ledger: Ledger) -> Iterator[Collector]:
    """A running collector over the test's ledger; no checkpoint interval ends in a test."""
    running = Collector(ledger.log, checkpoint_interval_ns=10**12)
    running.start()
    yield running
    running.stop()
