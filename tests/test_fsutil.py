"""Atomic small files: what a killed writer leaves behind does not pile up."""

from __future__ import annotations

import os
import time
from pathlib import Path

from auditmesh.fsutil import STALE_TEMPORARY_S, write_atomic


def test_a_killed_writers_old_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "state[1].json"  # glob metacharacters in the name are literal
    old = tmp_path / ".state[1].json.0123456789ab.tmp"  # as a SIGKILL mid-write leaves it
    recent = tmp_path / ".state[1].json.ba9876543210.tmp"  # another writer's, in progress
    other = tmp_path / ".other.json.0123456789ab.tmp"
    for left in (old, recent, other):
        left.write_bytes(b"partial")
    past = time.time() - STALE_TEMPORARY_S - 60
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert not old.exists()
    assert recent.exists() and other.exists()


def test_the_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_atomic(target, b"secret", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]
