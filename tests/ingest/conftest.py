"""Fixtures the OTLP receiver tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from auditmesh.collector import Collector
from auditmesh.datadir import Ledger


@pytest.fixture
def collector(ledger: Ledger) -> Iterator[Collector]:
    """A running collector over the test's ledger; no checkpoint interval ends in a test."""
    running = Collector(ledger.log, checkpoint_interval_ns=10**12)
    running.start()
    yield running
    running.stop()
