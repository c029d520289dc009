"""Full verification of a log, offline: recompute everything, trust nothing stored.

Reads every entry in index order, recomputes its leaf hash (RFC 9162 §2.1.1), compares it
with the stored level-0 tile, rebuilds the tree with `TreeBuilder` comparing every
completed level-8k subtree with the stored higher tiles (C2SP tlog-tiles) and every other
completed node with the interior nodes stored beside them (they serve proofs), opens every
checkpoint with the verifier key (C2SP signed-note) and checks its root against the
rebuilt tree at its size, so successive checkpoints are consistent by construction. The
first divergence raises `VerificationError` naming the place, the expected (stored or
signed) value and the computed one.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from auditmesh.ledger import merkle, tiles
from auditmesh.ledger.checkpoint import Checkpoint, open_checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import UntrustedNote, Verifier, open_note
from auditmesh.workers import map_in_workers

HASH = 32
_LEAF_PREFIXED = hashlib.sha256(merkle.LEAF_PREFIX)  # RFC 9162 §2.1.1: SHA-256(0x00 || d)


class LogReader(Protocol):
    """Read access to a log, local (a store) or remote (tlog-tiles over HTTP)."""

    def size(self) -> int: ...

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]: ...

    def read_tile(self, level: int, index: int) -> bytes | tiles.StoredTile: ...

    def checkpoint_notes(self) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class VerifyReport:
    size: int
    checkpoints: int
    latest: Checkpoint | None
    trusted: int = 0  # the auditor's own checkpoints from before, checked too

    @property
    def unsigned(self) -> int:
        """Entries after the latest checkpoint: appended since it was signed (the server signs
        each second while the log grows), or covered by checkpoints that are gone."""
        return self.size - (self.latest.size if self.latest is not None else 0)


Progress = Callable[[int, int], None]
OpenReader = Callable[[], LogReader]
"""Opens the same log again, in a worker process: must be picklable (e.g. a partial)."""

SEGMENT_BITS = 14
"""Entries are verified in aligned segments of 2^14: about 16 MiB of entries in memory at a
time per process, and enough segments to keep every worker busy."""


@dataclass(frozen=True, slots=True)
class _Segment:
    """What one segment [start, end) contributes: its compact range at each checkpoint size
    inside it (relative to `start`) and at its end. Every node it completes (up to its own
    root) was checked against the stored tiles by whoever computed it."""

    start: int
    end: int
    cuts: dict[int, tuple[bytes, ...]]
    compact: tuple[bytes, ...]


def verify_log(
    reader: LogReader,
    verifier: Verifier,
    *,
    origin: str | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
    open_reader: OpenReader | None = None,
    segment_bits: int | None = None,
    trusted: Sequence[bytes] = (),
) -> VerifyReport:
    """Verify everything; with `jobs` > 1 and `open_reader`, segments run in that many
    processes (this one and workers that each open the log with `open_reader`) and are
    combined in order, so the first divergence reported is the same as with one process.

    `trusted`: checkpoint notes the auditor kept from before (``log checkpoint``, a bundle),
    signed by the same key. The log must still hold each one's entries with the same root,
    whatever it stores now: a log never rolls back (C2SP tlog-witness), and a ledger emptied
    or replaced along with its own checkpoints is caught only against what was seen before."""
    checkpoints = _open_checkpoints(reader.checkpoint_notes(), verifier, origin)
    size = reader.size()
    kept = _open_trusted(trusted, verifier, origin, size)
    kept_ids = {id(k) for k in kept}
    if checkpoints and checkpoints[-1].size > size:
        raise VerificationError(
            "entries are missing: a signed checkpoint covers more entries than are stored",
            expected=checkpoints[-1].size,
            computed=size,
            where="end of log",
        )
    if size and (not checkpoints or checkpoints[-1].size == 0):
        # A checkpoint of the empty log is the same note for every log of this key and origin:
        # it vouches for nothing stored.
        raise VerificationError(
            "no signed checkpoint covers any entry: no signature vouches for the log (its "
            "checkpoints were removed, or the server never signed one)",
            expected="a checkpoint of size > 0",
            computed=checkpoints[-1].size if checkpoints else "none",
            where="checkpoints",
        )
    if segment_bits is None:
        segment_bits = SEGMENT_BITS
    width = 1 << segment_bits
    plan = _plan(size, width, sorted({c.size for c in (*checkpoints, *kept)}))
    tile_checker = _TileChecker(reader)
    # Nodes above the segments' roots: level `segment_bits` + the top builder's level.
    top = merkle.TreeBuilder(
        on_run=lambda level, first, hashes: tile_checker.check_run(
            level + segment_bits, first, hashes
        )
    )
    by_size: dict[int, list[Checkpoint]] = {}  # two notes of one size must both match
    for checkpoint in (*checkpoints, *kept):
        if checkpoint.size == 0:
            _check_root(checkpoint, merkle.EMPTY_ROOT, trusted=id(checkpoint) in kept_ids)
        else:
            by_size.setdefault(checkpoint.size, []).append(checkpoint)
    verified = _Verified(progress, size)
    for segment in _segments(reader, tile_checker, open_reader, jobs, plan, verified.add):
        before = top.compact_range  # the tree [0, segment.start), in perfect subtrees
        if segment.end - segment.start == width:  # a full segment: its root, one level up
            top.append(segment.compact[0])
        for cut, local in segment.cuts.items():
            # At the end of a full segment its root has merged with `before`'s right edge.
            hashes = top.compact_range if cut == segment.start + width else before + local
            root = merkle.TreeBuilder.from_compact_range(cut, hashes).root()
            for checkpoint in by_size[cut]:
                _check_root(checkpoint, root, trusted=id(checkpoint) in kept_ids)
    tile_checker.check_edge(size)
    latest = checkpoints[-1] if checkpoints else None
    return VerifyReport(size, len(checkpoints), latest, len(kept))


def _plan(size: int, width: int, sizes: list[int]) -> Iterator[tuple[int, int, list[int]]]:
    """The segments [start, end) of `width` entries, each with the (sorted) checkpoint
    `sizes` that fall in (start, end]. Lazily: the size is the signed checkpoint's for a
    remote log (C2SP tlog-checkpoint allows up to 2**63-1), and a list of its segments
    would fill the memory before the first one showed the entries missing."""
    at = 0
    for start in range(0, size, width):
        end = min(start + width, size)
        cuts = []
        while at < len(sizes) and sizes[at] <= end:
            if sizes[at] > start:
                cuts.append(sizes[at])
            at += 1
        yield start, end, cuts


class _Verified:
    """Entries verified so far for `progress`, counted as segments finish: in parallel they
    finish out of order (this process works from the back), before they are combined."""

    def __init__(self, progress: Progress | None, size: int) -> None:
        self._progress, self._size = progress, size
        self._count = 0
        self._lock = threading.Lock()  # workers' results are told from the pool's thread

    def add(self, entries: int) -> None:
        if self._progress is None:
            return
        with self._lock:  # in order of the count: a bar never steps back
            self._count += entries
            self._progress(self._count, self._size)


def _segments(
    reader: LogReader,
    checker: _TileChecker,
    open_reader: OpenReader | None,
    jobs: int,
    plan: Iterator[tuple[int, int, list[int]]],
    verified: Callable[[int], None],
) -> Iterator[_Segment]:
    if jobs > 1 and open_reader is not None:
        # Worker processes re-open a local log, whose size is that of the entries it holds.
        segments = list(plan)
        if len(segments) >= 2:
            starts, ends, cuts = zip(*segments, strict=True)
            yield from map_in_workers(
                jobs,
                _open_in_worker,
                open_reader,
                _segment_in_worker,
                starts,
                ends,
                cuts,
                here=functools.partial(_verify_segment, reader, checker),
                done=lambda position: verified(ends[position] - starts[position]),
            )
            return
        plan = iter(segments)
    for start, end, at in plan:
        segment = _verify_segment(reader, checker, start, end, at)
        verified(end - start)
        yield segment


_WORKER: tuple[LogReader, _TileChecker] | None = None  # one per worker process


def _open_in_worker(open_reader: OpenReader) -> None:
    global _WORKER
    reader = open_reader()
    _WORKER = (reader, _TileChecker(reader))


def _segment_in_worker(start: int, end: int, cuts: list[int]) -> _Segment:
    assert _WORKER is not None, "the pool's initializer opens the reader"
    reader, checker = _WORKER
    return _verify_segment(reader, checker, start, end, cuts)


def _verify_segment(
    reader: LogReader, checker: _TileChecker, start: int, end: int, cuts: list[int]
) -> _Segment:
    """Leaf hashes of [start, end) against the level-0 tiles, and every node the segment
    completes against the tiles and interior nodes (indices offset by the aligned start)."""
    rows = list(reader.entries(start, end))
    _check_contiguous(rows, start, end)
    # merkle.leaf_hash, inlined (hot): a copy of a hash that has taken the prefix saves
    # concatenating 0x00 with every entry, about a fifth of the leaf's time.
    hashes: list[bytes] = []
    add, prefixed = hashes.append, _LEAF_PREFIXED.copy
    for _, data in rows:
        leaf = prefixed()
        leaf.update(data)
        add(leaf.digest())
    checker.check_run(0, start, hashes)
    builder = merkle.TreeBuilder(
        on_run=lambda level, first, run: checker.check_run(level, first + (start >> level), run)
    )
    at: dict[int, tuple[bytes, ...]] = {}
    position = start
    for cut in cuts:
        builder.extend(hashes[position - start : cut - start])
        at[cut] = builder.compact_range
        position = cut
    builder.extend(hashes[position - start :])
    return _Segment(start, end, at, builder.compact_range)


def _check_contiguous(rows: list[tuple[int, bytes]], start: int, end: int) -> None:
    """Entries must be exactly start..end-1 in order: a gap is a deleted or moved row."""
    if len(rows) == end - start and (not rows or (rows[0][0], rows[-1][0]) == (start, end - 1)):
        return
    for expected, (index, _) in enumerate(rows, start=start):
        if index != expected:
            raise VerificationError(
                "an entry is missing or out of order",
                expected=expected,
                computed=index,
                where=f"index {expected}",
            )
    raise VerificationError(
        "an entry is missing",
        expected=end,
        computed=start + len(rows),
        where=f"index {start + len(rows)}",  # the first one missing: those before are there
    )


def _open_trusted(
    notes: Sequence[bytes], verifier: Verifier, origin: str | None, size: int
) -> list[Checkpoint]:
    """The auditor's kept checkpoints, each covering no more than the `size` stored."""
    opened = []
    for number, note in enumerate(notes, start=1):
        where = f"trusted checkpoint #{number}"
        try:
            checkpoint = open_checkpoint(note, verifier, origin)
        except (VerificationError, ValueError) as exc:
            raise VerificationError(f"it does not verify: {exc}", where=where) from exc
        if checkpoint.size > size:
            raise VerificationError(
                "the log holds fewer entries than a checkpoint you trust: entries were "
                "removed, or the ledger was emptied or replaced",
                expected=checkpoint.size,
                computed=size,
                where=where,
            )
        opened.append(checkpoint)
    return opened


def _open_checkpoints(
    notes: list[bytes], verifier: Verifier, origin: str | None
) -> list[Checkpoint]:
    opened: list[Checkpoint] = []
    for number, note in enumerate(notes, start=1):
        try:
            checkpoint = open_checkpoint(note, verifier, origin)
        except UntrustedNote as exc:
            raise _untrusted(exc, number, notes, verifier) from exc
        except (VerificationError, ValueError) as exc:
            raise VerificationError(
                f"checkpoint does not verify: {exc}", where=f"checkpoint #{number}"
            ) from exc
        if opened and checkpoint.size < opened[-1].size:
            raise VerificationError(
                "checkpoints are out of order",
                expected=f"size >= {opened[-1].size}",
                computed=checkpoint.size,
                where=f"checkpoint #{number}",
            )
        opened.append(checkpoint)
    return opened


class WrongKey(VerificationError):
    """No checkpoint of the log is signed by the verifier key (C2SP signed-note: signatures
    by other keys are not checked, only named by their lines): the key is another log's.
    ``expected`` is the key and ``computed`` the signers of checkpoint ``where``, each as
    ``name+hash`` (the first two fields of a verifier key)."""

    def __init__(self, key: str, signers: list[str], where: str) -> None:
        self.key, self.signers = key, signers  # read by _describe, from super()
        super().__init__(
            "no checkpoint is signed by the key", expected=key, computed=signers, where=where
        )

    def _describe(self) -> str:
        return f"{self.message} {self.key}; {self.where} is signed by {', '.join(self.signers)}"

    def __reduce__(self) -> tuple[object, ...]:  # as its base, should it cross processes
        return (WrongKey, (self.key, self.signers, self.where))


def _untrusted(
    exc: UntrustedNote, number: int, notes: list[bytes], verifier: Verifier
) -> VerificationError:
    """Checkpoint #`number` has no signature by `verifier`: the wrong key was given, unless
    another checkpoint is signed by it (then this one is not the log's)."""
    key, where = f"{verifier.name}+{verifier.key_hash:08x}", f"checkpoint #{number}"
    # Checkpoints open in order, so a later one is the only other that may be signed by it.
    if number == 1 and not any(_signed_by(note, verifier) for note in notes[1:]):
        return WrongKey(key, exc.signers, where)
    return VerificationError(
        f"checkpoint is signed by {', '.join(exc.signers)}, not by the key {key}, which "
        "signs other checkpoints",
        where=where,
    )


def _signed_by(note: bytes, verifier: Verifier) -> bool:
    """Whether `note` carries a valid signature by `verifier` (C2SP signed-note)."""
    try:
        open_note(note, [verifier])
    except VerificationError:
        return False
    return True


def _check_root(checkpoint: Checkpoint, computed: bytes, *, trusted: bool = False) -> None:
    if checkpoint.root_hash != computed:
        raise VerificationError(
            "the root of a checkpoint you trust differs from the tree rebuilt from the "
            "entries: the ledger was rewritten or replaced since you saw it"
            if trusted
            else "the signed checkpoint's root differs from the tree rebuilt from the entries",
            expected=checkpoint.root_hash,
            computed=computed,
            where=f"{'trusted ' if trusted else ''}checkpoint at size {checkpoint.size}",
        )


def _read(reader: LogReader, level: int, index: int) -> tiles.StoredTile:
    """A stored tile whose shape holds (a proof through any other tile would fail)."""
    return tiles.checked_tile(reader.read_tile(level, index), level, index)


class _TileChecker:
    """Compares recomputed hashes with the stored tiles (and the interior nodes kept with
    them), one tile read at a time."""

    def __init__(self, reader: LogReader, *, cache_tiles: int = 1024) -> None:
        self._reader = reader
        # Each level's run passes over the segment's tiles once: keep a segment's worth.
        self._cached: OrderedDict[tuple[int, int], tiles.StoredTile] = OrderedDict()
        self._cache_tiles = cache_tiles

    def _tile(self, level: int, index: int) -> tiles.StoredTile:
        key = (level, index)
        tile = self._cached.get(key)
        if tile is None:
            tile = self._cached[key] = _read(self._reader, level, index)
            if len(self._cached) > self._cache_tiles:
                self._cached.popitem(last=False)
        return tile

    def check_run(self, level: int, first: int, hashes: list[bytes]) -> None:
        """Compare nodes ``first``… of tree level ``level`` with what is stored for them: a
        tile's hashes when ``level`` is a multiple of 8, its interior nodes otherwise (these
        serve proofs, so they must be right too; ledgers written before they were kept have
        none, and nothing is compared)."""
        tile_level, k = divmod(level, tiles.TILE_HEIGHT)
        per_tile = tiles.TILE_WIDTH >> k
        position, end = first, first + len(hashes)
        while position < end:
            tile_index, offset = divmod(position, per_tile)
            stop = min(end, (tile_index + 1) * per_tile)
            stored = tiles.interior_level(self._tile(tile_level, tile_index), k)
            if k and not stored:
                position = stop
                continue
            computed = b"".join(hashes[position - first : stop - first])
            if stored[offset * HASH : (stop - tile_index * per_tile) * HASH] != computed:
                for node in range(position, stop):  # find and name the first difference
                    at = (node - tile_index * per_tile) * HASH
                    self._differs(level, node, stored[at : at + HASH], hashes[node - first])
            position = stop
        if k == 0 and tile_level > 0:  # each is also the top node (8/0) of a tile below
            for node in range(first, end):
                below = self._tile(tile_level - 1, node)
                top = tiles.interior_level(below, tiles.TILE_HEIGHT)
                if top and top != hashes[node - first]:
                    raise VerificationError(
                        "stored interior node differs from the tile hash recomputed above it",
                        expected=top,
                        computed=hashes[node - first],
                        where=f"{tiles.tile_path(tile_level - 1, node)} node 8/0",
                    )

    def _differs(self, level: int, node: int, stored: bytes, computed: bytes) -> None:
        if stored == computed:
            return
        tile_level, k = divmod(level, tiles.TILE_HEIGHT)
        tile_index, offset = divmod(node, tiles.TILE_WIDTH >> k)
        path = tiles.tile_path(tile_level, tile_index)
        if level == 0:
            what, where = f"the entry at index {node}", f"{path} entry {offset}"
        else:
            leaves = node << level
            what = f"entries {leaves}..{leaves + (1 << level) - 1}"
            where = f"{path} entry {offset}" if k == 0 else f"{path} node {k}/{offset}"
        raise VerificationError(
            f"stored {'tile hash' if k == 0 else 'interior node'} differs from the hash "
            f"recomputed from {what}",
            expected=stored or None,
            computed=computed,
            where=where,
        )

    def check_edge(self, size: int) -> None:
        """No tile may hold hashes beyond the end of the log."""
        level = 0
        while True:
            width_leaves = 1 << (level * tiles.TILE_HEIGHT)
            count = size // width_leaves  # complete hashes at this tile level
            tile_index, used = divmod(count, tiles.TILE_WIDTH)
            tile = _read(self._reader, level, tile_index)  # fresh: it may have grown
            if len(tile.hashes) > used * HASH:
                raise VerificationError(
                    "a tile holds hashes beyond the end of the log",
                    expected=used,
                    computed=len(tile.hashes) // HASH,
                    where=tiles.tile_path(level, tile_index),
                )
            if count == 0:
                return
            level += 1
