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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from auditmesh.ledger import merkle, tiles
from auditmesh.ledger.checkpoint import Checkpoint, open_checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier

HASH = 32


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


Progress = Callable[[int, int], None]


def verify_log(
    reader: LogReader,
    verifier: Verifier,
    *,
    origin: str | None = None,
    progress: Progress | None = None,
    chunk: int = 65536,
) -> VerifyReport:
    checkpoints = _open_checkpoints(reader.checkpoint_notes(), verifier, origin)
    size = reader.size()
    if checkpoints and checkpoints[-1].size > size:
        raise VerificationError(
            "entries are missing: a signed checkpoint covers more entries than are stored",
            expected=checkpoints[-1].size,
            computed=size,
            where="end of log",
        )
    pending = iter(checkpoints)
    next_cp = next(pending, None)
    tile_checker = _TileChecker(reader)
    builder = merkle.TreeBuilder(on_run=tile_checker.check_run)
    leaf_hash = merkle.leaf_hash
    while next_cp is not None and next_cp.size == 0:
        _check_root(next_cp, merkle.EMPTY_ROOT)
        next_cp = next(pending, None)
    for start in range(0, size, chunk):
        end = min(start + chunk, size)
        rows = list(reader.entries(start, end))
        _check_contiguous(rows, start, end)
        hashes = [leaf_hash(data) for _, data in rows]
        tile_checker.check_leaves(start, hashes)
        position = start
        while next_cp is not None and next_cp.size <= end:
            builder.extend(hashes[position - start : next_cp.size - start])
            _check_root(next_cp, builder.root())
            position = next_cp.size
            next_cp = next(pending, None)
        builder.extend(hashes[position - start :])
        if progress is not None:
            progress(end, size)
    tile_checker.check_edge(builder)
    return VerifyReport(size, len(checkpoints), checkpoints[-1] if checkpoints else None)


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
        "an entry is missing", expected=end, computed=start + len(rows), where=f"index {end}"
    )


def _open_checkpoints(
    notes: list[bytes], verifier: Verifier, origin: str | None
) -> list[Checkpoint]:
    opened: list[Checkpoint] = []
    for number, note in enumerate(notes, start=1):
        try:
            checkpoint = open_checkpoint(note, verifier, origin)
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


def _check_root(checkpoint: Checkpoint, computed: bytes) -> None:
    if checkpoint.root_hash != computed:
        raise VerificationError(
            "the signed checkpoint's root differs from the tree rebuilt from the entries",
            expected=checkpoint.root_hash,
            computed=computed,
            where=f"checkpoint at size {checkpoint.size}",
        )


def _read(reader: LogReader, level: int, index: int) -> tiles.StoredTile:
    got = reader.read_tile(level, index)
    return got if isinstance(got, tiles.StoredTile) else tiles.StoredTile(bytes(got))


class _TileChecker:
    """Compares recomputed hashes with the stored tiles (and the interior nodes kept with
    them), one tile read at a time."""

    def __init__(self, reader: LogReader) -> None:
        self._reader = reader
        self._cached: dict[int, tuple[int, tiles.StoredTile]] = {}  # level -> (index, tile)

    def _tile(self, level: int, index: int) -> tiles.StoredTile:
        cached = self._cached.get(level)
        if cached is None or cached[0] != index:
            cached = (index, _read(self._reader, level, index))
            self._cached[level] = cached
        return cached[1]

    def check_leaves(self, start: int, leaf_hashes: list[bytes]) -> None:
        """Compare a run of recomputed leaf hashes with the level-0 tiles, a tile at a time."""
        self.check_run(0, start, leaf_hashes)

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

    def check_edge(self, builder: merkle.TreeBuilder) -> None:
        """No tile may hold hashes beyond the end of the log."""
        size = builder.size
        level = 0
        while True:
            width_leaves = 1 << (level * tiles.TILE_HEIGHT)
            count = size // width_leaves  # complete hashes at this tile level
            tile_index, used = divmod(count, tiles.TILE_WIDTH)
            tile = _read(self._reader, level, tile_index)
            if len(tile.hashes) > used * HASH:
                raise VerificationError(
                    "a tile holds hashes beyond the end of the log",
                    expected=used,
                    computed=len(tile.hashes) // HASH,
                    where=tiles.tile_path(level, tile_index),
                )
            width = len(tile.hashes) // HASH
            if tile.nodes and len(tile.nodes) != tiles.interior_size(width):
                raise VerificationError(
                    "a tile's interior nodes do not fit its width",
                    expected=tiles.interior_size(width),
                    computed=len(tile.nodes),
                    where=f"{tiles.tile_path(level, tile_index)} nodes",
                )
            if count == 0:
                return
            level += 1
