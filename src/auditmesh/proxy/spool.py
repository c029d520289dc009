"""The sidecar's disk spool: audit events the server has not acknowledged yet.

Place in the house: data plane, between the sidecar's emitter (`proxy/emitter.py`) and the
collector. When the server is away the emitter appends batches here and later replays them
oldest first; acknowledged records are skipped by a persisted read cursor and deleted a
segment at a time. Pure file I/O, no asyncio: the emitter runs every call on one worker
thread, so a `Spool` is used by one thread at a time (and by one process: `DIR/lock`).

Layout of DIR (the sidecar's data dir + `/spool`):

    DIR/<seq:016d>.seg  segments: the 8-byte magic, then records (`proxy/spool_format.py`)
    DIR/<seq:016d>.seg.damaged  a segment set aside because its magic was damaged
    DIR/state.json      {"segment": seq, "offset": bytes, "last": crc,
                         "dropped": {reason: count},
                         "damaged": {"cut_bytes": n, "set_aside": [name, ...],
                                     "missing": [name, ...], "state_set_aside": [...]}}:
                        the read cursor (first un-acknowledged record), the CRC of the
                        record just before it (the last acknowledged, null if none), and
                        the drops and damage not yet reported; replaced atomically (write,
                        fsync, rename, fsync dir)
    DIR/state.json.damaged  a state file set aside because it could not be read as one
    DIR/lock            flock(2) held while open

Opening the spool checks every un-acknowledged record by its CRC. Damaged bytes (a write
torn by kill -9 or power loss at the tail, or a bad sector anywhere) are cut out and never
delivered; the intact records after them are found again and kept (how:
`proxy/spool_repair.py`). Damage that appears while the spool is open is met when a record
is read, and cut out the same way there. A segment whose magic is damaged (or a `.seg`
file that is no segment) is set aside, renamed `*.seg.damaged` and kept for the operator;
its records are not delivered. A segment deleted from outside the spool (noticed on
opening, as a number missing from the run of segments, and while open, when it is read or
appended to) is noted as missing, its records lost (how many is not known), and the spool
goes on with the next one. What was cut out, set aside or found missing is noted in the
state file before it is (`damage_pending`), and forgotten only once the emitter has
reported it (`clear_damage`), so a crash cannot lose the report (a crash between noting
and cutting reports those bytes twice, never not at all).

Segments are numbered one after another; a number is skipped only where a segment was set
aside or deleted, and the number of the segment the state file's cursor points into is
never given to a new segment (its records would be skipped as acknowledged).

A state file that is damaged (not JSON, fields of the wrong type, unreadable bytes) is set
aside as `state.json.damaged` (kept for the operator) and reading starts again at the
oldest segment's first record: nothing un-acknowledged is lost, and what the server
already has is sent again, which it keeps once (by event id). So is one whose cursor the
segments do not bear out, since records before a wrong cursor may never have been
delivered: the cursor may skip records (segments before its own, the head of its own) only
where the record ending at it has the CRC the state file names (for a cursor at the start
of a segment: the last record of the segment before, left by a crash before its deletion);
a cursor inside a record, past its segment's end, past records of another spool, or in a
segment that is gone while segments before it are not, is not applied. A state file of an
older auditmesh names no CRC: its cursor is applied where it ends a record (and leftover
segments before it are taken as acknowledged, as they were). The drops and damage it held
unreported are unknown; the report of the damaged state file says so. A state file (or
any spool file) this process may not read or write stops the spool with a `SpoolError`
that names it and says what to do: its bytes are probably sound, and the cause (an owner
or mode) is the operator's to fix.

Bound: `max_bytes` caps the un-acknowledged bytes (8-byte headers included); disk use
can exceed it by the acknowledged head of the oldest segment (< `segment_bytes`). When
an append would pass the bound, `when_full` decides:

- `block`: the spool never discards what it accepted; `append` takes the longest prefix
  of the batch that fits and returns how many it took, the caller keeps the rest;
- `drop-oldest`: the oldest un-acknowledged records (then, if the batch alone is larger
  than the bound, the oldest of the batch) are discarded to make room and counted under
  the reason "spool_full" in `dropped_pending`, which survives restarts until the
  emitter has reported it (`clear_dropped`).

A write the disk refuses (ENOSPC, EIO) leaves the spool as it was: the tail segment is cut
back to its last whole record, a segment that cannot be started is not used, a cursor
that cannot be persisted does not retire the tail. `append` raises if it stored nothing,
else returns how many records (a prefix) it stored; once the disk has room it goes on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, TypeAlias

from auditmesh.fsutil import fsync_dir
from auditmesh.proxy.spool_format import (
    HEADER,
    MAGIC,
    RECORD_OVERHEAD,
    encode,
    intact_size,
    record_size,
)
from auditmesh.proxy.spool_repair import (
    SpoolDamage,
    aside_path,
    crc_ending_at,
    cut_back,
    missing_segments,
    replace,
    scan,
    segment_name,
    set_aside_numbers,
)

__all__ = [  # the spool's public names, some of them defined in the two modules above
    "MAGIC",
    "RECORD_OVERHEAD",
    "SPOOL_FULL",
    "MiB",
    "RecordTooLarge",
    "Spool",
    "SpoolConfig",
    "SpoolDamage",
    "SpoolError",
    "SpoolStats",
    "WhenFull",
    "record_size",
]

_READ_CHUNK = 256 * 1024
_STATE = "state.json"
MiB = 1024 * 1024
_STATE_LIMIT = MiB  # a state file is a few hundred bytes; a larger one is not one

WhenFull: TypeAlias = Literal["block", "drop-oldest"]
SPOOL_FULL = "spool_full"


class SpoolError(Exception):
    """The spool directory cannot be used: in use by another process, or a file in it that
    this process may not read or write (the message says which, and what to do)."""


class _Damaged(Exception):
    """Bytes of `segment` from `pos` on are not what the spool checked (raised by `_records`;
    the public operations repair and go on)."""

    def __init__(self, segment: _Segment, pos: int) -> None:
        super().__init__(f"{segment.path} changed under the spool at byte {pos}")
        self.segment, self.pos = segment, pos


class RecordTooLarge(ValueError):
    """One record is larger than the whole spool (`max_bytes`); it can never be stored."""


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    max_bytes: int = 64 * MiB
    segment_bytes: int = 4 * MiB
    when_full: WhenFull = "block"
    fsync: bool = True  # fsync after every append (one batch) and every cursor update

    def __post_init__(self) -> None:
        if self.max_bytes <= RECORD_OVERHEAD:
            raise ValueError(f"max_bytes must be more than {RECORD_OVERHEAD}")
        if self.segment_bytes <= len(MAGIC) + RECORD_OVERHEAD:
            raise ValueError(f"segment_bytes must be more than {len(MAGIC) + RECORD_OVERHEAD}")
        if self.when_full not in ("block", "drop-oldest"):
            raise ValueError(f"when_full must be 'block' or 'drop-oldest', not {self.when_full!r}")


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth_records: int  # un-acknowledged records
    depth_bytes: int  # their bytes, headers included
    free_bytes: int  # max_bytes - depth_bytes
    segments: int
    appended: int  # records appended since open
    evicted: int  # records discarded by drop-oldest since open
    truncated_bytes: int  # torn or corrupt bytes cut out or set aside since opening
    dropped_pending: tuple[tuple[str, int], ...]  # (reason, count) not yet reported


@dataclass(frozen=True, slots=True)
class _State:
    cursor: tuple[int, int]
    last: int | None  # the CRC of the record before the cursor (None: no record)
    named: bool  # False for an older state file, which names no record
    dropped: dict[str, int]
    damage: SpoolDamage


def _parse_state(raw: bytes) -> _State:
    """The fields of a state file; ValueError saying what is wrong if `raw` is not one."""
    if len(raw) > _STATE_LIMIT:
        raise ValueError(f"larger than {_STATE_LIMIT} bytes")
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    dropped, damaged = body.get("dropped"), body.get("damaged", {})  # older: no "damaged"
    if not isinstance(dropped, dict) or not isinstance(damaged, dict):
        raise ValueError('"dropped" and "damaged" must be objects')
    cursor = (_count(body, "segment"), _count(body, "offset"))
    if cursor[1] < len(MAGIC):
        raise ValueError(f"offset {cursor[1]} is inside the segment's magic")
    last = None if body.get("last") is None else _count(body, "last")
    return _State(
        cursor,
        last,
        "last" in body,
        {k: n for k in dropped if (n := _count(dropped, k))},
        SpoolDamage(
            _count(damaged, "cut_bytes", 0),
            _names(damaged, "set_aside"),
            _names(damaged, "missing"),
            _names(damaged, "state_set_aside"),
        ),
    )


def _count(fields: dict[str, object], key: str, default: int | None = None) -> int:
    value = fields.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key!r} is {value!r}, not a count")
    return value


def _names(fields: dict[str, object], key: str) -> tuple[str, ...]:
    value = fields.get(key, [])
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{key!r} is {value!r}, not a list of file names")
    return tuple(value)


def _no_access(directory: Path, exc: PermissionError) -> str:
    """One line for a spool file this process may not use: which, and what to do."""
    name = exc.filename if exc.filename is not None else directory
    try:
        found = os.stat(name)
        whose = f" (owner uid {found.st_uid}, mode {stat.S_IMODE(found.st_mode):03o})"
    except OSError:
        whose = ""
    return (
        f"permission denied on {name}{whose}; this process runs as uid {os.geteuid()}: "
        f"give it read and write access to {directory} and every file in it (for example "
        "with chown -R), then start it again"
    )


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    end: int  # bytes of intact data, magic included


class Spool:
    """An append-only, segmented, crash-safe FIFO of records in `directory`."""

    def __init__(self, directory: Path, config: SpoolConfig | None = None) -> None:
        self.directory = Path(directory)
        self.config = config or SpoolConfig()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.directory / "lock", "a+b")  # held until close
        except PermissionError as exc:
            raise SpoolError(_no_access(self.directory, exc)) from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SpoolError(f"{self.directory} is in use by another process") from None
        self._segments: list[_Segment] = []
        self._cursor = (0, len(MAGIC))
        self._last: int | None = None  # the CRC of the record before the cursor, if any
        self._dropped: dict[str, int] = {}
        self._damage = SpoolDamage()  # not yet reported (persisted with the drops)
        self._durable: tuple[tuple[int, int], int | None] = (self._cursor, self._last)  # on disk
        self._depth_records = 0
        self._depth_bytes = 0
        self._appended = 0
        self._evicted = 0
        self._truncated = 0
        self._tail: BinaryIO | None = None
        try:
            self._recover()
        except PermissionError as exc:
            self.close()
            raise SpoolError(_no_access(self.directory, exc)) from None
        except BaseException:
            self.close()
            raise

    # --- opening ---------------------------------------------------------------------

    def _recover(self) -> None:
        for stale in self.directory.glob("*.tmp"):  # a replacement a crash left unfinished
            stale.unlink()
        found = sorted(
            (int(p.name[:-4]), p)
            for p in self.directory.glob("*.seg")
            if p.name[:-4].isdigit() and len(p.name) == 20
        )
        self._load_state(found[0][0] if found else 0, dict(found))
        cursor_seq, cursor_off = self._cursor
        for seq, path in found:
            if seq < cursor_seq:
                path.unlink()  # fully acknowledged; a crash interrupted its deletion
                continue
            self._segments.append(_Segment(seq, path, 0))
        gone = missing_segments(
            cursor_seq,
            cursor_off > len(MAGIC),
            [segment.seq for segment in self._segments],
            self._set_aside_numbers(),
        )
        if not self._segments or self._segments[0].seq != cursor_seq:
            # Its segment is gone (set aside, or deleted): start at the next one. With none,
            # a cursor inside it moves past its number, which a new segment must not reuse.
            if self._segments:
                cursor_seq = self._segments[0].seq
            elif cursor_off > len(MAGIC):
                cursor_seq += 1
            cursor_off = len(MAGIC)
        self._cursor = (cursor_seq, cursor_off)
        if gone:  # nothing lies between the state file's cursor and this one any more
            self._durable = (self._cursor, self._last)
            self._note_damage(SpoolDamage(missing=gone))
        for segment in list(self._segments):  # one set aside moves the cursor past it
            start = self._cursor[1] if segment.seq == self._cursor[0] else len(MAGIC)
            self._depth_records += self._check_segment(segment, start)
        if self._segments:
            self._cursor = (self._cursor[0], min(self._cursor[1], self._segments[0].end))
        self._normalise_cursor()
        self._depth_bytes = self._bytes_from_cursor()
        self._open_tail()

    def _load_state(self, oldest: int, found: dict[int, Path]) -> None:
        """Take the cursor and the unreported drops and damage from the state file. Without
        one (a new spool) reading starts at the oldest segment, `oldest`; a damaged one, or
        one whose cursor the segments `found` do not bear out, is set aside, noted as
        damage, and reading starts there too."""
        path = self.directory / _STATE
        self._cursor, self._last = (oldest, len(MAGIC)), None
        self._durable = (self._cursor, self._last)
        try:
            with open(path, "rb") as f:
                state = _parse_state(f.read(_STATE_LIMIT + 1))
        except FileNotFoundError:
            return
        except OSError as exc:
            # Unreadable bytes (EIO) and a directory are damage; a PermissionError is not:
            # the bytes may be sound, and the owner or mode is the operator's to fix.
            if exc.errno not in (errno.EIO, errno.EISDIR):
                raise
        except (ValueError, RecursionError):  # not JSON (nested too deep), not our fields
            pass
        else:
            last = self._borne_out(state, found)
            if last is not False:
                self._cursor, self._last = state.cursor, last
                self._durable = (self._cursor, self._last)
                self._dropped, self._damage = state.dropped, state.damage
                return
        aside = aside_path(path)
        # A link, not a rename: state.json stays until the new state replaces it, so a
        # crash in between finds it damaged again rather than losing the report.
        try:
            os.link(path, aside, follow_symlinks=False)
        except OSError:  # a file system without hard links, or a directory
            try:
                path.rename(aside)
            except OSError as exc:
                raise SpoolError(
                    f"{path} is not a spool state file and cannot be set aside "
                    f"({exc.strerror}): move it out of {self.directory}, then start again"
                ) from None
        fsync_dir(self.directory)
        self._note_damage(SpoolDamage(state_set_aside=(aside.name,)))  # replaces it

    def _borne_out(self, state: _State, found: dict[int, Path]) -> int | None | Literal[False]:
        """The CRC of the record before the state file's cursor, as the segments `found`
        hold it (None: no record there), or False if they do not bear the cursor out (the
        module docstring says when)."""
        seq, off = state.cursor
        before = any(n < seq for n in found)  # acknowledged, if the cursor is right
        if off == len(MAGIC) and not before:
            return state.last  # nothing before it to skip
        if seq not in found:
            if off > len(MAGIC):  # its segment is gone (noted as missing, or set aside)
                return False if before else state.last
            if seq - 1 not in found:
                return False
        path = found[seq] if off > len(MAGIC) else found[seq - 1]
        with open(path, "rb") as f:
            crc = crc_ending_at(f.read(), off if off > len(MAGIC) else None)
        if crc is None or (state.named and crc != state.last):
            return False
        return crc

    def _set_aside_numbers(self) -> set[int]:
        """The numbers of the segments set aside (`*.seg.damaged*`, or not yet reported)."""
        on_disk = (p.name for p in self.directory.glob("*.seg.damaged*"))
        return set_aside_numbers([*on_disk, *self._damage.set_aside])

    def _open_tail(self) -> None:
        """(Re)open the last segment for appending, at its end: after opening, and after a
        repair replaced, cut, set aside or lost a segment under the running spool."""
        if self._tail is not None:
            self._tail.close()
            self._tail = None
        while self._segments:
            try:
                self._tail = open(self._segments[-1].path, "r+b", buffering=0)
            except FileNotFoundError:
                self._lose(self._segments[-1])
                continue
            self._tail.seek(self._segments[-1].end)
            return

    def _check_segment(self, segment: _Segment, start: int) -> int:
        """Count the intact records from `start`; cut out torn or corrupt bytes. A segment
        whose magic is damaged is set aside instead, and one deleted from outside the spool
        is lost (0 returned for either)."""
        try:
            on_disk = segment.path.read_bytes()
        except FileNotFoundError:
            self._lose(segment)
            return 0
        seq, off = self._cursor
        first = off if seq == segment.seq else len(MAGIC)  # its first un-acknowledged byte
        if not on_disk.startswith(MAGIC) and not MAGIC.startswith(on_disk):
            self._set_aside(segment, max(0, len(on_disk) - first))  # all it holds is lost
            return 0
        # A magic cut short: the segment was created, but its magic never made it to disk.
        data = on_disk if len(on_disk) >= len(MAGIC) else MAGIC
        found = scan(data, max(start, len(MAGIC)))
        # A segment that shrank under the running spool lost what it held past its new end
        # (`end` is 0 when opening).
        lost = found.cut + max(0, segment.end - max(len(on_disk), first))
        if lost:
            self._note_damage(SpoolDamage(lost))  # durable before the bytes are gone
            self._truncated += lost
        if found.intact != on_disk:
            if on_disk.startswith(found.intact):  # damage only at the end: a torn last write
                cut_back(segment.path, len(found.intact))
            else:
                replace(segment.path, found.intact)
        segment.end = len(found.intact)
        return found.records

    def _set_aside(self, segment: _Segment, cut: int) -> None:
        """Rename a segment whose magic is damaged to `*.seg.damaged` (never delete it: the
        operator may want its bytes) and go on without it; `cut` is its un-acknowledged
        bytes, reported as lost."""
        aside = aside_path(segment.path)
        self._note_damage(SpoolDamage(cut, (aside.name,)))  # durable before it is gone
        segment.path.rename(aside)
        fsync_dir(self.directory)
        self._truncated += cut
        self._forget(segment)

    def _lose(self, segment: _Segment) -> None:
        """`segment` was deleted from outside the spool: the records it held are lost (how
        many is unknown). Note it, and go on without it."""
        self._note_damage(SpoolDamage(missing=(segment.path.name,)))
        self._forget(segment)

    def _forget(self, segment: _Segment) -> None:
        """Go on without `segment` (set aside, or lost). A cursor in it moves to the next
        segment, or past its number: the state file may still hold a cursor into it, which
        must not apply to a new segment."""
        self._segments.remove(segment)
        if self._cursor[0] == segment.seq:
            later = (s.seq for s in self._segments if s.seq > segment.seq)
            self._cursor = (next(later, segment.seq + 1), len(MAGIC))

    def _note_damage(self, damage: SpoolDamage) -> None:
        """Remember, durably if the disk lets us, damage to report."""
        if damage == SpoolDamage():
            return
        self._damage = self._damage.plus(damage)
        try:  # with the cursor on disk: the one in memory may be mid-way through _advance
            self._write_state(*self._durable)
        except OSError:
            pass  # a full disk: it goes to disk with the next state update

    def _repair(self, damage: _Damaged) -> None:
        """Bytes changed under the open spool (a bad sector, a stray write): cut them out
        as opening would (or set the segment aside), then count the spool again, repairing
        any further damage met on the way. Reading then goes on past the damage."""
        while True:
            if damage.segment in self._segments:
                self._check_segment(damage.segment, damage.pos)
                self._open_tail()  # the tail may have been replaced, cut or set aside
                if self._segments and self._cursor[0] == self._segments[0].seq:
                    self._cursor = (self._cursor[0], min(self._cursor[1], self._segments[0].end))
                self._normalise_cursor()
            try:
                with closing(self._records()) as records:
                    self._depth_records = sum(1 for _ in records)
            except _Damaged as more:
                damage = more
                continue
            self._depth_bytes = self._bytes_from_cursor()
            return

    # --- reading ---------------------------------------------------------------------

    def _records(self) -> Generator[tuple[int, int, bytes, int], None, None]:
        """(segment seq, offset just past the record, payload, CRC) from the cursor on."""
        cursor_seq, cursor_off = self._cursor
        for segment in self._segments:
            if segment.seq < cursor_seq:
                continue
            pos = cursor_off if segment.seq == cursor_seq else len(MAGIC)
            try:
                f = open(segment.path, "rb")
            except FileNotFoundError:  # deleted under the spool: the repair notes it
                raise _Damaged(segment, pos) from None
            with f:
                f.seek(pos)
                buf, at = b"", 0  # buf[at:] holds the file from `pos` on
                while pos < segment.end:
                    if len(buf) - at < RECORD_OVERHEAD:
                        buf, at = buf[at:] + f.read(_READ_CHUNK), 0
                    if len(buf) - at >= RECORD_OVERHEAD:
                        length, crc = HEADER.unpack_from(buf, at)
                        need = RECORD_OVERHEAD + length
                        if len(buf) - at < need:
                            buf, at = buf[at:] + f.read(max(_READ_CHUNK, need)), 0
                        limit = at + min(len(buf) - at, segment.end - pos)
                        if intact_size(buf, at, limit) == need:
                            pos += need
                            yield segment.seq, pos, buf[at + RECORD_OVERHEAD : at + need], crc
                            at += need
                            continue
                    raise _Damaged(segment, pos)

    def peek(self, max_records: int, max_bytes: int | None = None) -> list[bytes]:
        """The oldest un-acknowledged payloads, in order, without consuming them.

        At most `max_records`, and no more than `max_bytes` of payload unless the first
        record alone is larger (it is still returned, so the queue never stalls).
        """
        while True:
            out: list[bytes] = []
            total = 0
            try:
                with closing(self._records()) as records:
                    for _, _, payload, _ in records:
                        if len(out) >= max_records:
                            break
                        if out and max_bytes is not None and total + len(payload) > max_bytes:
                            break
                        out.append(payload)
                        total += len(payload)
            except _Damaged as damage:  # cut it out, then read again past it
                self._repair(damage)
                continue
            return out

    # --- consuming -------------------------------------------------------------------

    def ack(self, count: int) -> None:
        """The oldest `count` records are delivered: move the cursor past them, durably.

        If damage is met on the way (bytes changed since `peek` read them), only the
        records before it are acknowledged: which of those `peek` returned are past the
        damage cannot be known, so they are offered again rather than risk skipping one.
        """
        if not 0 <= count <= self._depth_records:
            raise ValueError(f"cannot acknowledge {count} of {self._depth_records} records")
        if count:
            self._advance(count=count)
            self._commit_cursor()

    def _advance(self, *, count: int = 0, need_bytes: int = 0) -> tuple[int, int]:
        """Move the cursor (in memory) past `count` records, or past at least `need_bytes`;
        return (records, bytes) passed."""
        records = freed = 0
        try:
            with closing(self._records()) as it:
                for seq, end, payload, crc in it:
                    if (count and records >= count) or (not count and freed >= need_bytes):
                        break
                    self._cursor, self._last = (seq, end), crc
                    records += 1
                    freed += record_size(payload)
        except _Damaged as damage:  # stop before it; the repair counts the spool again
            self._repair(damage)
        else:
            self._depth_records -= records
            self._depth_bytes -= freed
        self._normalise_cursor()
        return records, freed

    def _commit_cursor(self) -> None:
        """Persist the cursor, then delete what lies wholly before it.

        An empty spool keeps no segment: the cursor moves to the next sequence number
        and the next append starts a fresh segment there.
        """
        cursor = self._cursor
        if self._depth_records == 0 and self._segments:
            cursor = (self._segments[-1].seq + 1, len(MAGIC))
        self._write_state(cursor, self._last)  # first: if it fails (ENOSPC) the tail stays usable
        self._cursor = cursor
        if self._segments and cursor[0] > self._segments[-1].seq and self._tail is not None:
            self._tail.close()
            self._tail = None
        seq = self._cursor[0]
        while self._segments and self._segments[0].seq < seq:
            self._segments.pop(0).path.unlink(missing_ok=True)

    def _normalise_cursor(self) -> None:
        """A cursor at the end of a segment that is not the last moves to the next one."""
        seq, off = self._cursor
        for number, segment in enumerate(self._segments[:-1]):
            if segment.seq == seq and off >= segment.end:
                seq, off = self._segments[number + 1].seq, len(MAGIC)
        self._cursor = (seq, off)

    # --- appending -------------------------------------------------------------------

    @property
    def free_bytes(self) -> int:
        return self.config.max_bytes - self._depth_bytes

    def append(self, records: Sequence[bytes]) -> int:
        """Append payloads in order; return how many were taken (see `when_full`).

        `drop-oldest` always takes the batch (possibly evicting); `block` takes the longest
        prefix that fits. Raises `RecordTooLarge` (taking nothing) if one payload alone
        exceeds `max_bytes`, and `ValueError` for an empty payload. A disk error raises
        `OSError` if nothing was stored; after a prefix was, the count says how much.
        """
        sizes = [record_size(r) for r in records]
        for record, size in zip(records, sizes, strict=True):
            if not record:
                raise ValueError("a spool record cannot be empty")
            if size > self.config.max_bytes:
                raise RecordTooLarge(f"a {size}-byte record exceeds max_bytes")
        taken = list(records)
        free = self.free_bytes
        if self.config.when_full == "block":
            count = 0
            for size in sizes:
                if size > free:
                    break
                free -= size
                count += 1
            taken = taken[:count]
        else:
            skipped = 0
            while sum(sizes[skipped:]) > self.config.max_bytes:
                skipped += 1
            taken, need = taken[skipped:], sum(sizes[skipped:]) - free
            evicted = 0
            while need > 0:  # more than once only if damage stopped an eviction
                evicted += self._advance(need_bytes=need)[0]
                need = sum(sizes[skipped:]) - self.free_bytes
            if evicted + skipped:
                self._evicted += evicted + skipped
                self._dropped[SPOOL_FULL] = self._dropped.get(SPOOL_FULL, 0) + evicted + skipped
                self._commit_cursor()
        written = self._write(taken) if taken else 0
        if self.config.when_full == "block":
            return written
        return written + len(records) - len(taken)  # the skipped count as taken (dropped)

    def _write(self, records: list[bytes]) -> int:
        """Append `records` segment by segment; return how many are stored. A write that
        fails (ENOSPC) leaves nothing of its chunk: it raises if nothing was stored, else
        the records of the chunks before it are stored, and their count is returned."""
        tail = self._segments[-1] if self._segments else None
        if (
            tail is not None
            and self._tail is not None
            and not os.fstat(self._tail.fileno()).st_nlink
        ):
            self._repair(_Damaged(tail, tail.end))  # deleted: what is written there is lost
        chunk, count, written = bytearray(), 0, 0
        try:
            for record in records:
                tail = self._segments[-1] if self._segments else None
                if tail is None or (
                    tail.end + len(chunk) + record_size(record) > self.config.segment_bytes
                    and tail.end + len(chunk) > len(MAGIC)
                ):
                    if chunk:
                        self._flush_chunk(bytes(chunk), count)
                        written += count
                        chunk, count = bytearray(), 0
                    self._new_segment()
                chunk += encode(record)
                count += 1
            self._flush_chunk(bytes(chunk), count)
        except OSError:
            if not written:
                raise
            return written
        return written + count

    def _flush_chunk(self, chunk: bytes, count: int) -> None:
        assert self._tail is not None
        tail = self._segments[-1]
        fd = self._tail.fileno()  # unbuffered: nothing of a failed write lingers in memory
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if self.config.fsync:
                os.fsync(fd)
        except OSError:
            os.ftruncate(fd, tail.end)  # a failed write (ENOSPC) must not leave half a record
            os.lseek(fd, tail.end, os.SEEK_SET)
            raise
        tail.end += len(chunk)
        self._depth_bytes += len(chunk)
        self._depth_records += count
        self._appended += count

    def _new_segment(self) -> None:
        """Start the next segment; if that fails (ENOSPC), the current tail stays the tail."""
        seq = self._segments[-1].seq + 1 if self._segments else self._cursor[0]
        path = self.directory / segment_name(seq)
        new = open(path, "w+b", buffering=0)
        try:
            if new.write(MAGIC) != len(MAGIC):
                raise OSError(errno.ENOSPC, f"short write of {path}'s magic")
            if self.config.fsync:
                os.fsync(new.fileno())
                fsync_dir(self.directory)
        except OSError:
            new.close()
            path.unlink(missing_ok=True)
            raise
        if self._tail is not None:
            self._tail.close()  # its records were fsynced by the _flush_chunk that wrote them
        self._tail = new
        self._segments.append(_Segment(seq, path, len(MAGIC)))
        self._normalise_cursor()

    # --- drops -----------------------------------------------------------------------

    @property
    def dropped_pending(self) -> dict[str, int]:
        """Records lost (by reason) and not yet reported by a `system` event."""
        return dict(self._dropped)

    def note_dropped(self, reason: str, count: int) -> None:
        """Remember, durably, that `count` events were lost for `reason` outside the spool."""
        if count > 0:
            self._dropped[reason] = self._dropped.get(reason, 0) + count
            self._write_state(self._cursor, self._last)

    def clear_dropped(self, reported: Mapping[str, int]) -> None:
        """The drops in `reported` are now recorded in an event: forget them."""
        for reason, count in reported.items():
            left = self._dropped.get(reason, 0) - count
            if left > 0:
                self._dropped[reason] = left
            else:
                self._dropped.pop(reason, None)
        self._write_state(self._cursor, self._last)

    # --- damage ----------------------------------------------------------------------

    @property
    def damage_pending(self) -> SpoolDamage | None:
        """Damage (cut out, or set aside) not yet reported by a `system` event; None if none."""
        return None if self._damage == SpoolDamage() else self._damage

    def clear_damage(self, reported: SpoolDamage) -> None:
        """The damage in `reported` is now recorded in an event: forget it."""
        self._damage = self._damage.minus(reported)
        self._write_state(self._cursor, self._last)

    # --- state -----------------------------------------------------------------------

    def _bytes_from_cursor(self) -> int:
        seq, off = self._cursor
        return sum(s.end - (off if s.seq == seq else len(MAGIC)) for s in self._segments)

    def _write_state(self, cursor: tuple[int, int], last: int | None) -> None:
        seq, off = cursor
        damage = self._damage
        damaged = {
            "cut_bytes": damage.cut_bytes,
            "set_aside": list(damage.set_aside),
            "missing": list(damage.missing),
            "state_set_aside": list(damage.state_set_aside),
        }
        body = {
            "segment": seq,
            "offset": off,
            "last": last,
            "dropped": dict(sorted(self._dropped.items())),
            "damaged": damaged,
        }
        tmp = self.directory / (_STATE + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(body).encode() + b"\n")
                f.flush()
                if self.config.fsync:
                    os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written copy
            raise
        os.replace(tmp, self.directory / _STATE)
        if self.config.fsync:
            fsync_dir(self.directory)
        self._durable = ((seq, off), last)

    @property
    def depth_records(self) -> int:
        return self._depth_records

    @property
    def depth_bytes(self) -> int:
        return self._depth_bytes

    def stats(self) -> SpoolStats:
        return SpoolStats(
            depth_records=self._depth_records,
            depth_bytes=self._depth_bytes,
            free_bytes=self.free_bytes,
            segments=len(self._segments),
            appended=self._appended,
            evicted=self._evicted,
            truncated_bytes=self._truncated,
            dropped_pending=tuple(sorted(self._dropped.items())),
        )

    def close(self) -> None:
        if self._tail is not None:
            if self.config.fsync:
                os.fsync(self._tail.fileno())
            self._tail.close()
            self._tail = None
        if not self._lock.closed:
            self._lock.close()  # releases the flock

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
