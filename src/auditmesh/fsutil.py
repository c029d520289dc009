"""Crash-safe small files: state, cursors, keys and tokens are replaced atomically.

A crash leaves either the old file or the new one, never a torn one: write a temporary
file (created with its final mode, so a key is never readable by others even briefly),
fsync it, rename it over the old one, fsync the directory so the rename is durable. A
temporary file that a killed process left behind is removed by a later write of the same
file, once it is old enough not to be another writer's work in progress.
"""

from __future__ import annotations

import glob
import os
import secrets
import time
from pathlib import Path

STALE_TEMPORARY_S = 600.0
"""A temporary file this old is a killed writer's, not one still being written."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    too_old = time.time() - STALE_TEMPORARY_S
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if left.stat().st_mtime < too_old:
                left.unlink()
        except OSError:  # gone already, or not ours to remove: it stays for now
            continue
