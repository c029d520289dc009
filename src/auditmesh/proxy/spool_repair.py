"""What survives in a damaged spool directory, and the report of what did not.

Place in the house: data plane, under the sidecar's disk spool (`proxy/spool.py`), which
calls these when it opens and whenever a read meets bytes that are not what it checked.
The spool decides when to repair and keeps the cursor and the report; this module finds
the intact records in a segment's bytes, applies a repair to a file whole or not at all,
names files set aside, and finds the segments deleted from outside. Pure functions over
bytes and names, but for `cut_back` and `replace` (which write) and `aside_path` (which
looks for a free name).

- Damaged bytes (a write torn by kill -9 or power loss at the tail, a bad sector anywhere)
  are cut out; the intact records after them are found again by their CRC, trying only
  places where the byte after a header is `{` (a payload is a JSON object).
- A file set aside is renamed `NAME.damaged` (`NAME.damaged.N` if that is taken), never
  deleted: the operator may want its bytes.
- Segments are numbered one after another, so a number missing from the run, that no
  segment set aside explains, was deleted from outside the spool.
- A cursor the state file holds must be the end of the record it names by its CRC
  (`crc_ending_at`): else it is not the spool's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from auditmesh.fsutil import write_atomic
from auditmesh.proxy.spool_format import HEADER, MAGIC, RECORD_OVERHEAD, intact_size


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """Damage not yet reported: un-acknowledged bytes lost (cut out, or in segments set
    aside); the names (in the spool directory) of the segments set aside; of the segments
    deleted from outside the spool ("A.seg to B.seg" for a run), whose records are lost
    (how many is unknown); and of the state files set aside (reading started again at the
    oldest record; drops and damage they held unreported are unknown)."""

    cut_bytes: int = 0
    set_aside: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    state_set_aside: tuple[str, ...] = ()

    def plus(self, more: SpoolDamage) -> SpoolDamage:
        return SpoolDamage(
            self.cut_bytes + more.cut_bytes,
            _union(self.set_aside, more.set_aside),
            _union(self.missing, more.missing),
            _union(self.state_set_aside, more.state_set_aside),
        )

    def minus(self, reported: SpoolDamage) -> SpoolDamage:
        return SpoolDamage(
            max(0, self.cut_bytes - reported.cut_bytes),
            tuple(n for n in self.set_aside if n not in reported.set_aside),
            tuple(n for n in self.missing if n not in reported.missing),
            tuple(n for n in self.state_set_aside if n not in reported.state_set_aside),
        )


def _union(names: tuple[str, ...], more: tuple[str, ...]) -> tuple[str, ...]:
    return names + tuple(n for n in more if n not in names)


# --- damaged bytes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scan:
    """What `scan` found: the intact records from the start on, the damaged bytes among
    them, and the segment's bytes without those (what it should hold)."""

    records: int
    cut: int
    intact: bytes


def scan(data: bytes, start: int) -> Scan:
    """Check the records of a segment's bytes from `start` (a record boundary, past the
    magic) on; the bytes before `start` (acknowledged) are kept as they are."""
    runs: list[bytes] = []  # the runs of intact bytes
    run_start, end, records, cut = 0, start, 0, 0
    for pos, size in intact_records(data, start):
        if pos > end:  # damaged bytes before this record
            runs.append(data[run_start:end])
            cut += pos - end
            run_start = pos
        end = pos + size
        records += 1
    if end < len(data):  # damaged bytes at the end
        runs.append(data[run_start:end])
        cut += len(data) - end
        run_start = len(data)
    runs.append(data[run_start:])
    return Scan(records, cut, b"".join(runs))  # no copy when it is all one run


def intact_records(data: bytes, start: int) -> Iterator[tuple[int, int]]:
    """(offset, size) of each intact record of a segment's bytes from `start` (a record
    boundary, past the magic) on, past damaged bytes too."""
    pos = start
    while pos < len(data):
        size = intact_size(data, pos, len(data))
        if size:
            yield pos, size
            pos += size
        else:
            pos = next_intact(data, pos)


def crc_ending_at(data: bytes, end: int | None = None) -> int | None:
    """The CRC of the intact record of a segment's bytes that ends at `end` (a cursor), or
    of the last intact record when `end` is None; None where there is no such record (then
    `end` is no record boundary in `data`)."""
    found = None
    for pos, size in intact_records(data, len(MAGIC)):
        if end is not None and pos + size > end:
            break
        found = (pos, size)
    if found is None or (end is not None and sum(found) != end):
        return None
    return int(HEADER.unpack_from(data, found[0])[1])


def next_intact(data: bytes, pos: int) -> int:
    """Where the first intact record after the damaged byte at `pos` starts (or the end)."""
    brace = data.find(b"{", pos + 1 + RECORD_OVERHEAD)
    while brace != -1:
        if intact_size(data, brace - RECORD_OVERHEAD, len(data)):
            return brace - RECORD_OVERHEAD
        brace = data.find(b"{", brace + 1)
    return len(data)


def cut_back(path: Path, size: int) -> None:
    """Cut `path` back to its first `size` bytes in place, durably: a torn last write goes
    without needing free space on a disk that may be full."""
    with open(path, "r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def replace(path: Path, data: bytes) -> None:
    """Make `data` the bytes of `path`, whole or not at all (a temporary `*.tmp` beside
    it, fsynced and renamed over it; one a crash leaves is removed when the spool opens)."""
    write_atomic(path, data)


# --- files set aside, files gone --------------------------------------------------------


def aside_path(path: Path) -> Path:
    """A free name to set `path` aside under: `NAME.damaged`, else `NAME.damaged.N` (an
    earlier one of the same name stays too)."""
    aside, number = path.with_name(path.name + ".damaged"), 0
    while aside.exists() or aside.is_symlink():
        number += 1
        aside = path.with_name(f"{path.name}.damaged.{number}")
    return aside


def segment_name(seq: int) -> str:
    return f"{seq:016d}.seg"


def set_aside_numbers(names: Iterable[str]) -> set[int]:
    """The segment numbers among file names (`<seq>.seg.damaged`, `….damaged.N`)."""
    return {int(n[:16]) for n in names if n[:16].isdigit() and n[16:28] == ".seg.damaged"}


def missing_segments(
    first: int, inside: bool, present: Sequence[int], set_aside: set[int]
) -> tuple[str, ...]:
    """The segments deleted from outside the spool ("A.seg to B.seg" for a run). Numbers
    run on from the cursor's segment, `first`: one below the highest present that is
    neither present nor set aside was deleted; so was `first` if the cursor is `inside` it
    (past its first record) and it is neither."""
    last = max(present, default=first if inside else first - 1)
    known = sorted({n for n in (*present, *set_aside) if first <= n <= last})
    names, expected = [], first
    for number in [*known, last + 1]:  # the gaps between known numbers, however wide
        if number > expected:
            to = "" if number - 1 == expected else f" to {segment_name(number - 1)}"
            names.append(segment_name(expected) + to)
        expected = number + 1
    return tuple(names)
