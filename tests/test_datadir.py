"""Opening a data directory: a reader never writes to the ledger it reads."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from auditmesh.collector import entry_of
from auditmesh.datadir import open_ledger
from auditmesh.store.base import StoreError
from tests.conftest import generate


def test_a_reader_refuses_a_ledger_without_an_origin_and_writes_nothing(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, origin="test/log")
    ledger.log.append([entry_of(e) for e in generate(5)])
    ledger.log.checkpoint()
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:  # as if the server were just creating it
        db.execute("DELETE FROM meta WHERE key = 'origin'")
    db.close()
    before = hashlib.sha256((tmp_path / "ledger.db").read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="records no log origin"):
        open_ledger(tmp_path, create=False)
    assert hashlib.sha256((tmp_path / "ledger.db").read_bytes()).hexdigest() == before
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone() is None
    db.close()
