"""The spool on a disk that fills up: a failed write (ENOSPC) leaves the spool as it was,
and once there is room again it appends, reads and reopens cleanly.

The disk is a real, small tmpfs (needs root to mount; skipped otherwise), filled with a
ballast file that the test removes to give the space back."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditmesh.proxy.spool import Spool, SpoolConfig


def payloads(start: int, count: int, pad: int = 200) -> list[bytes]:
    return [json.dumps({"n": n, "pad": "x" * pad}).encode() for n in range(start, start + count)]


def numbers(records: list[bytes]) -> list[int]:
    return [json.loads(r)["n"] for r in records]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with a ballast file; remove it to free them."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def append_until_full(spool: Spool, start: int) -> int:
    """Append batches of 3 until the disk refuses one whole (the spool raises); return the
    next number. Before that it may take a prefix (the records before a segment it could
    not start), and says how many."""
    n = start
    while True:
        try:
            n += spool.append(payloads(n, 3))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return n


@pytest.mark.parametrize("segment_bytes", [4 * 1024 * 1024, 2048], ids=["one_segment", "many"])
def test_a_write_the_full_disk_refuses_leaves_nothing_behind(
    small_disk: Path, segment_bytes: int
) -> None:
    directory = small_disk / "spool"
    config = SpoolConfig(max_bytes=64 * 1024 * 1024, segment_bytes=segment_bytes)
    with Spool(directory, config) as spool:
        spool.append(payloads(0, 3))
        ballast = fill(small_disk)
        n = append_until_full(spool, 3)
        assert numbers(spool.peek(10_000)) == list(range(n))
        n = append_until_full(spool, n)  # still full: refused again, and again nothing stays
        assert numbers(spool.peek(10_000)) == list(range(n))
        ballast.unlink()  # room again
        assert spool.append(payloads(n, 3)) == 3
        assert numbers(spool.peek(10_000)) == list(range(n + 3))
        spool.ack(3)
        assert numbers(spool.peek(10_000)) == list(range(3, n + 3))
    with Spool(directory, config) as reopened:
        assert numbers(reopened.peek(10_000)) == list(range(3, n + 3))
        assert reopened.stats().truncated_bytes == 0  # nothing torn was left on disk


def test_an_acknowledgement_the_full_disk_refuses_does_not_break_appending(
    small_disk: Path,
) -> None:
    directory = small_disk / "spool"
    config = SpoolConfig(max_bytes=64 * 1024 * 1024)
    with Spool(directory, config) as spool:
        spool.append(payloads(0, 5))
        ballast = fill(small_disk)
        with pytest.raises(OSError):  # the cursor cannot be written
            spool.ack(5)
        ballast.unlink()
        assert spool.append(payloads(5, 2)) == 2
        assert numbers(spool.peek(100)) == [5, 6]
        spool.ack(1)
    with Spool(directory, config) as reopened:
        assert numbers(reopened.peek(100)) == [6]


def test_a_torn_tail_is_cut_off_on_a_full_disk(small_disk: Path) -> None:
    """A sidecar killed mid-write on a full disk can still open its spool: cutting off a
    torn tail needs no free space."""
    directory = small_disk / "spool"
    with Spool(directory) as spool:
        spool.append(payloads(0, 5))
    (segment,) = directory.glob("*.seg")
    torn = payloads(5, 1)[0]
    with open(segment, "ab") as f:
        f.write(len(torn).to_bytes(4, "big") + b"\0\0\0\0" + torn[:50])
    ballast = fill(small_disk)
    with Spool(directory) as recovered:
        assert numbers(recovered.peek(100)) == [0, 1, 2, 3, 4]
        assert recovered.stats().truncated_bytes == 8 + 50
        ballast.unlink()
        recovered.append(payloads(5, 1))
    with Spool(directory) as again:
        assert numbers(again.peek(100)) == [0, 1, 2, 3, 4, 5]
        assert again.stats().truncated_bytes == 0
