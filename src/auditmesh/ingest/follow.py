"""Reading access logs line by line: whole files, growing files, and streams.

Place in the house: the I/O edge under `auditmesh ingest` (cli/ingest.py), which decides
what to do with each line; the parsers (`envoy`, `linkerd`) never see a file. Three parts:

- `LineSplitter`: sans-IO (bytes in, complete lines out, each with the byte offset just
  after it), so the offset to resume from is always the end of a whole line.
- `Tail`: a file read from a stored `Position`, which keeps reading as the file grows
  (`follow=True`) and notices rotation (the path names a new inode: finish the old file,
  which a writer may still flush to for a moment, so only once it has been quiet for
  `rotate_wait_s`, then start the new one at its beginning) and truncation (`copytruncate`:
  the file got shorter than our offset, or the bytes just before our offset are no longer
  the ones read there, since the writer refilled it past that offset: start over). A
  stored position passes the same tests on resume: the same path and inode, not shorter
  than its offset, and the bytes before its offset still the ones read there
  (`Position.before`), else the file was truncated and refilled while no one followed it.
  A position in a file rotated away while no one followed (renamed beside the path, a new
  file created there) is resumed in that file, found by its inode, before the new one.
  Whenever a position is not applied the file is read from its beginning: the ledger
  dedups by event id, derived from the line text, so reading again is harmless.
- `Stream`: a pipe or stdin, read until it closes; no positions, nothing to resume.

`save_position` / `load_position` keep the resume point in a small JSON state file,
replaced atomically (write, fsync, rename, fsync the directory), keyed by the file's path
and inode: a position recorded for another file is not applied. A state file of an older
auditmesh has no fingerprint; its position is applied on path, inode and size alone. With the
position goes how far a file written along with the reading had got (`Written`, the rejects
file; `load_written`), so a resumed run can drop what was written for lines after it.
"""

from __future__ import annotations

import hashlib
import os
import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Protocol

import msgspec

from auditmesh.fsutil import write_atomic

MAX_LINE = 1 << 20  # longer lines are reported as too long, cut to this many bytes
CHUNK = 1 << 16
ROTATE_WAIT_S = 5.0  # how long a rotated-away file must stay quiet before it is closed
FINGERPRINT = 256  # bytes before the offset compared to notice a rewritten file


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading resumes: just after line `line` (1-based), at byte `offset` of the file
    with this path, device and inode, whose bytes before `offset` are still these.

    `before` is the fingerprint kept in the state file: SHA-256 (hex) of the
    min(offset, FINGERPRINT) bytes just before `offset`; "" when unknown (a state file of
    an older auditmesh). A `Tail` fills `bytes_before`, those bytes as read, and
    `save_position` hashes them: once per stored position, not once per line read. Not
    read again when stored: by then the file may have been refilled (the server took
    long to answer) or rotated away, and its bytes would vouch for another file."""

    path: str
    device: int
    inode: int
    offset: int
    line: int
    before: str = ""
    bytes_before: bytes = field(default=b"", repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """`before`, or the hash of `bytes_before`; "" when neither is known."""
        if self.before or not self.bytes_before:
            return self.before
        return _fingerprint(self.bytes_before)


@dataclass(frozen=True, slots=True)
class Written:
    """A file written along with the reading (the rejects file) as it stood when a position
    was stored: its path, device and inode (0 and 0: it did not exist) and size. Past `size`
    lies what was written for lines after the position, which a resumed run reads again."""

    path: str
    device: int
    inode: int
    size: int


@dataclass(frozen=True, slots=True)
class _Stored:
    written: Written | None = None  # None: a state file of an older auditmesh


@dataclass(frozen=True, slots=True)
class Line:
    """One line without its line break. `end` is where reading resumes after it (None for
    a stream); `too_long` when the line exceeded `MAX_LINE` and `data` holds its start."""

    number: int
    data: bytes
    end: Position | None
    too_long: bool = False


class LineSplitter:
    """Bytes in, complete lines out as (number, data, end offset, too_long). Sans-IO."""

    def __init__(self, offset: int = 0, line: int = 0, max_line: int = MAX_LINE) -> None:
        self.offset = offset  # byte offset just after the last line handed out
        self.line = line
        self._max = max_line
        self._buffer = bytearray()
        self._dropped = 0  # bytes of an over-long line not kept in _buffer

    def feed(self, data: bytes) -> list[tuple[int, bytes, int, bool]]:
        out: list[tuple[int, bytes, int, bool]] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            room = self._max - len(self._buffer)
            if len(piece) > room:
                self._buffer += piece[: max(room, 0)]
                self._dropped += len(piece) - max(room, 0)
            else:
                self._buffer += piece
            if newline < 0:
                return out
            out.append(self._emit(1))
            start = newline + 1

    def finish(self) -> list[tuple[int, bytes, int, bool]]:
        """The unterminated last line, if any (the input has ended)."""
        return [self._emit(0)] if self._buffer or self._dropped else []

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._dropped

    def _emit(self, terminator: int) -> tuple[int, bytes, int, bool]:
        data = bytes(self._buffer)
        too_long = self._dropped > 0
        self.offset += len(data) + self._dropped + terminator
        self.line += 1
        self._buffer.clear()
        self._dropped = 0
        if data.endswith(b"\r"):
            data = data[:-1]
        return self.line, data, self.offset, too_long


class LineSource(Protocol):
    """What `auditmesh ingest` reads from."""

    @property
    def done(self) -> bool:
        """True once no line will ever come again."""
        ...

    def read(self, max_lines: int) -> list[Line]:
        """Lines available now, at most `max_lines`; [] when nothing new is there."""
        ...

    def wait(self, seconds: float) -> None:
        """Block until new input may be there, at most `seconds`."""
        ...


class Tail:
    """A file's lines from `resume` (when it names this very file) or from the start.

    With `follow=False` the file is read to its end once. With `follow=True` reading goes
    on as it grows, across rotation and truncation; `notes` tells what happened.
    """

    def __init__(
        self,
        path: Path,
        *,
        follow: bool,
        resume: Position | None = None,
        rotate_wait_s: float = ROTATE_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path.absolute()
        self.follow = follow
        self.rotate_wait_s = rotate_wait_s
        self._clock = clock
        self._rotated_at: float | None = None  # when a new file was first seen at the path
        self._recent = b""  # the last bytes read, up to the file position: a fingerprint
        self.notes: list[str] = []
        self.resumed = False
        self._ready: deque[Line] = deque()
        self._done = False
        self._file: BinaryIO = open(self.path, "rb")
        stat = os.fstat(self._file.fileno())
        self._id = (stat.st_dev, stat.st_ino)
        self._splitter = LineSplitter()
        self._next: BinaryIO | None = None  # the file at the path, after the rotated one
        if resume is not None:
            self._resume(resume, stat.st_size)

    def _resume(self, resume: Position, size: int) -> None:
        """Start at `resume` if it is a position in this very file, as it was read, or in
        the file it was rotated to while no one followed (then this one comes next)."""
        if resume.path == str(self.path) and (resume.device, resume.inode) != self._id:
            if self._resume_rotated(resume):
                return
        if resume.path != str(self.path) or (resume.device, resume.inode) != self._id:
            self.notes.append(
                f"the stored position is for another file ({resume.path}, inode "
                f"{resume.inode}); reading {self.path} from its beginning"
            )
            return
        why = self._apply(resume, size)
        if why is not None:
            self.notes.append(f"{self.path} {why}; reading it from its beginning")

    def _apply(self, resume: Position, size: int) -> str | None:
        """Seek the open file to `resume`; else why it is not a position in it as read."""
        if resume.offset > size:
            return "is shorter than the stored position (truncated)"
        # Truncated and written again past the offset while no one followed (copytruncate
        # with a busy writer): the size cannot tell, the bytes before the offset can.
        length = min(resume.offset, FINGERPRINT)
        there = os.pread(self._file.fileno(), length, resume.offset - length)
        expected = resume.fingerprint
        if expected and _fingerprint(there) != expected:
            return (
                f"was rewritten since the stored position (its {length} bytes "
                f"before offset {resume.offset} differ)"
            )
        self._file.seek(resume.offset)
        self._splitter = LineSplitter(resume.offset, resume.line)
        self._recent = there  # so the positions read next have their whole fingerprint
        self.resumed = True
        return None

    def _resume_rotated(self, resume: Position) -> bool:
        """Rotated while stopped (renamed, a new file created at the path): the lines
        after `resume` are in the renamed file, found beside the path by its inode
        (`access.log.1`). Read its rest first, then the file at the path from its start.
        False when no such file is there, as it was read."""
        found = _same_file(self.path.parent, resume.device, resume.inode)
        if found is None:
            return False
        try:
            old = open(found, "rb")
        except OSError:
            return False
        stat = os.fstat(old.fileno())
        current, current_id = self._file, self._id
        self._file, self._id = old, (stat.st_dev, stat.st_ino)
        if self._id != (resume.device, resume.inode) or self._apply(resume, stat.st_size):
            old.close()
            self._file, self._id = current, current_id
            return False
        self._next = current
        self.notes.append(
            f"{self.path} was rotated to {found} while stopped; reading the rest of it from "
            f"the stored position, then {self.path} from its start"
        )
        return True

    @property
    def done(self) -> bool:
        return self._done and not self._ready

    @property
    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    @property
    def rotating(self) -> bool:
        """A new file is at the path, read once the old one has been quiet `rotate_wait_s`."""
        return self._rotated_at is not None

    @property
    def held(self) -> int:
        """Bytes of a last line still without its newline (with `follow`, a writer may not
        have finished it): not taken yet, and the stored position stays before them."""
        return self._splitter.pending

    def close(self) -> None:
        self._file.close()
        if self._next is not None:
            self._next.close()

    def read(self, max_lines: int) -> list[Line]:
        if self.follow and not self._ready:
            self._check_rewritten()
        while len(self._ready) < max_lines and not self._done:
            data = self._file.read(CHUNK)
            if data:
                window = self._recent + data
                self._recent = window[-FINGERPRINT:]
                self._rotated_at = None  # the old file is still written to: wait again
                self._queue(self._splitter.feed(data), window)
                continue
            if not self.follow and self._next is not None:
                self._switch(self._next)  # the rotated file is read: now the one at the path
                continue
            if not self.follow:
                self._queue(self._splitter.finish(), self._recent)
                self._done = True
            elif not self._ready and self._check_replaced():
                continue  # reading the new file, or the refilled one, from its start
            break
        return [self._ready.popleft() for _ in range(min(max_lines, len(self._ready)))]

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def _queue(self, lines: list[tuple[int, bytes, int, bool]], window: bytes) -> None:
        """`window`: the bytes read last, up to the file position, and the FINGERPRINT
        bytes before them, so it holds each line's `bytes_before` (a slice, not a hash:
        the hash is taken only for a position stored)."""
        device, inode = self._id
        start = self._file.tell() - len(window)  # the file offset of window[0]
        for number, data, end, too_long in lines:
            cut = end - start
            before = window[max(cut - FINGERPRINT, 0) : cut]
            position = Position(str(self.path), device, inode, end, number, "", before)
            self._ready.append(Line(number, data, position, too_long))

    def _check_replaced(self) -> bool:
        """At the end of the file: has the path been rotated to a new file, or truncated?
        True when reading starts over in a new or truncated file."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated away, not yet re-created: keep the old file until it is
        if (stat.st_dev, stat.st_ino) != self._id:
            # Rotation. A writer may flush to the old file a little longer (Envoy buffers
            # for a second): it is finished once it has been quiet that long.
            now = self._clock()
            if self._rotated_at is None:
                self._rotated_at = now
            if now - self._rotated_at < self.rotate_wait_s:
                return False
            self._rotated_at = None
            self._switch(open(self.path, "rb"))
            self.notes.append(f"{self.path} was rotated; reading the new file from its start")
            return True
        if stat.st_size < self._file.tell():
            self._start_over()
            return True
        return False

    def _switch(self, new: BinaryIO) -> None:
        """Finish the file read so far, then read `new` from its start."""
        self._queue(self._splitter.finish(), self._recent)
        self._recent = b""
        self._file.close()
        if self._next is not None and self._next is not new:
            self._next.close()
        self._next = None
        self._file = new
        stat = os.fstat(new.fileno())
        self._id = (stat.st_dev, stat.st_ino)
        self._splitter = LineSplitter()

    def _check_rewritten(self) -> None:
        """Truncated and written again past our offset before we looked (copytruncate with
        a busy writer): the size alone cannot tell, the bytes before the offset can."""
        start = self._file.tell() - len(self._recent)
        if self._recent and start >= 0:
            try:
                there = os.pread(self._file.fileno(), len(self._recent), start)
            except OSError:
                return
            if there != self._recent:
                self._start_over()

    def _start_over(self) -> None:
        self._file.seek(0)
        self._splitter = LineSplitter()
        self._recent = b""
        self.notes.append(f"{self.path} was truncated; reading it again from its start")


class Stream:
    """Lines of a pipe or stdin until it closes. No positions: a stream cannot be resumed."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._splitter = LineSplitter()
        self._ready: deque[Line] = deque()
        self._eof = False

    @property
    def done(self) -> bool:
        return self._eof and not self._ready

    def read(self, max_lines: int) -> list[Line]:
        while len(self._ready) < max_lines and not self._eof:
            readable, _, _ = select.select([self._fd], [], [], 0)
            if not readable:
                break
            data = os.read(self._fd, CHUNK)
            if not data:
                self._eof = True
                self._queue(self._splitter.finish())
            else:
                self._queue(self._splitter.feed(data))
        return [self._ready.popleft() for _ in range(min(max_lines, len(self._ready)))]

    def wait(self, seconds: float) -> None:
        if not self._eof:
            select.select([self._fd], [], [], seconds)

    def _queue(self, lines: list[tuple[int, bytes, int, bool]]) -> None:
        for number, data, _end, too_long in lines:
            self._ready.append(Line(number, data, None, too_long))


def load_position(state: Path) -> Position | None:
    """The stored position, or None when there is none (or it is unreadable: then reading
    starts over, which the ledger's dedup by event id makes harmless)."""
    try:
        return msgspec.json.decode(state.read_bytes(), type=Position)
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def load_written(state: Path) -> Written | None:
    """The `Written` stored with the position, or None when there is none."""
    try:
        return msgspec.json.decode(state.read_bytes(), type=_Stored).written
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save_position(state: Path, position: Position, written: Written | None = None) -> None:
    """Replace the state file atomically: a crash leaves the old position or the new one.
    It keeps the fingerprint, never the log's bytes themselves (the file is 0644)."""
    fields: dict[str, object] = asdict(position)
    del fields["bytes_before"]
    fields["before"] = position.fingerprint
    if written is not None:
        fields["written"] = asdict(written)
    write_atomic(state, msgspec.json.encode(fields) + b"\n")


def _same_file(directory: Path, device: int, inode: int) -> Path | None:
    """The regular file in `directory` with this device and inode, if there is one."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.inode() != inode:
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.st_dev == device and S_ISREG(stat.st_mode):
                    return Path(entry.path)
    except OSError:
        return None
    return None


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
