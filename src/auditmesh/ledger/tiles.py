"""C2SP tlog-tiles: how the ledger's Merkle tree is stored and served (https://c2sp.org/tlog-tiles).

Sits between ``merkle.py`` (pure tree math) and the store/server: the sequencer calls
:func:`tiles_after_append` and writes the tiles it returns in the same transaction as the
events; proofs and verifiers read the tree back through :class:`TileHashSource`; the HTTP layer
names resources with :func:`tile_path` / :func:`entries_path` and parses them with
:func:`parse_tile_path`. Pure functions over bytes; storage is a ``read_tile`` callable.

Tile ``(L, N)`` holds the Merkle Tree Hashes of tree level ``8·L``, indices ``256·N`` to
``256·N + 255``: level-0 tiles hold leaf hashes, and each hash of a level-``L`` tile (L ≥ 1) is
the root of a *full* tile at level ``L-1``. The rightmost tile of each level may be partial
(1 to 255 hashes) and is never hashed into the level above.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.merkle import HASH_SIZE, node_hash

__all__ = [
    "MAX_LEVEL",
    "ReadTile",
    "StoredTile",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileHashSource",
    "TileNotFoundError",
    "TileRef",
    "checked_tile",
    "decode_entry_bundle",
    "interior_level",
    "interior_size",
    "encode_entry_bundle",
    "entries_path",
    "parse_tile_path",
    "tile_path",
    "tile_width",
    "tiles_after_append",
]

TILE_HEIGHT = 8
"""Tree levels spanned by one tile."""
TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes in a full tile (256), and entries in a full entry bundle."""
MAX_LEVEL = 63
"""Highest tile level a path may name (tlog-tiles: 0 to 63)."""
MAX_TREE_SIZE = 1 << 63  # sizes and indices are signed 64-bit integers in storage
_FULL_BYTES = TILE_WIDTH * HASH_SIZE
_MAX_ENTRY = 0xFFFF


class StoredTile(NamedTuple):
    """A tile as the ledger stores it: the C2SP tile, plus the nodes inside it.

    ``nodes`` are the complete interior nodes of the height-8 subtree the tile spans — tree
    levels ``8·L+1`` to ``8·L+8`` relative to its hashes, level by level, bottom first (a tile
    of width ``w`` has ``w >> k`` nodes at level ``k``: 255 in all when full). They are derived
    data, kept so that a proof reads them instead of rehashing the tile; ``b""`` when absent.
    """

    hashes: bytes
    nodes: bytes = b""


ReadTile = Callable[[int, int], "bytes | StoredTile"]
"""``read_tile(level, index)``: the concatenated hashes stored for that tile (a partial tile is
shorter than 8,192 bytes), or a :class:`StoredTile` that also carries its interior nodes;
raises :class:`LookupError` when there is none."""


class TileNotFoundError(LookupError):
    """A tile needed to answer a read is missing, or is partial and too short for the read.

    A LookupError, like every :class:`~auditmesh.ledger.merkle.HashSource` miss: the tree the
    caller asked about is larger than what is stored. Stored tiles that are malformed (not a
    whole number of hashes, longer than a full tile) raise
    :class:`~auditmesh.ledger.errors.VerificationError` instead.
    """

    def __init__(self, message: str, *, level: int, index: int) -> None:
        super().__init__(message)
        self.level = level
        self.index = index


# --- paths (tlog-tiles "Merkle Tree" and "Log entries") ---------------------------------------


@dataclass(frozen=True, slots=True)
class TileRef:
    """A parsed tile or entry-bundle path. ``width`` is 256 for a full tile; entry bundles have
    ``is_entries`` set and level 0."""

    level: int
    index: int
    width: int
    is_entries: bool = False

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    def path(self) -> str:
        """The canonical path, the inverse of :func:`parse_tile_path`."""
        if self.is_entries:
            return entries_path(self.index, self.width)
        return tile_path(self.level, self.index, self.width)


def _encode_index(index: int) -> str:
    # <N>: zero-padded 3-digit path elements, all but the last prefixed with "x".
    if index < 0:
        raise ValueError(f"tile index must not be negative, got {index}")
    groups: list[str] = []
    while True:
        index, rem = divmod(index, 1000)
        groups.append(f"{rem:03d}")
        if not index:
            break
    groups.reverse()
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def _width_suffix(width: int | None) -> str:
    if width is None or width == TILE_WIDTH:
        return ""
    if not 1 <= width < TILE_WIDTH:
        raise ValueError(f"tile width must be 1 to 256, got {width}")
    return f".p/{width}"


def tile_path(level: int, index: int, width: int | None = None) -> str:
    """``tile/<L>/<N>[.p/<W>]``; width None or 256 names the full tile."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"tile level must be 0 to {MAX_LEVEL}, got {level}")
    return f"tile/{level}/{_encode_index(index)}{_width_suffix(width)}"


def entries_path(index: int, width: int | None = None) -> str:
    """``tile/entries/<N>[.p/<W>]``; width None or 256 names the full bundle."""
    return f"tile/entries/{_encode_index(index)}{_width_suffix(width)}"


_DIGITS = frozenset("0123456789")


def _decimal(text: str, what: str, path: str) -> int:
    if not text or not set(text) <= _DIGITS:
        raise ValueError(f"{path!r}: {what} {text!r} is not a decimal number")
    if len(text) > 1 and text[0] == "0":
        raise ValueError(f"{path!r}: {what} {text!r} has leading zeros")
    return int(text)


def parse_tile_path(path: str) -> TileRef:
    """Parse ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` (relative to the log
    prefix), accepting only the canonical encoding; ValueError says what is wrong."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise ValueError(f"{path!r}: not a tile path (want tile/<L>/<N>[.p/<W>])")
    is_entries = parts[1] == "entries"
    level = 0 if is_entries else _decimal(parts[1], "level", path)
    if level > MAX_LEVEL:
        raise ValueError(f"{path!r}: level {level} is above {MAX_LEVEL}")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width = _decimal(rest[-1], "partial width", path)
        if not 1 <= width < TILE_WIDTH:
            raise ValueError(
                f"{path!r}: partial width must be 1 to 255, got {width}"
                + (" (a full tile has no .p/ suffix)" if width == TILE_WIDTH else "")
            )
        rest = [*rest[:-2], rest[-2][:-2]]
    index = 0
    for i, element in enumerate(rest):
        last = i == len(rest) - 1
        digits = element if last else element[1:]
        if (not last and not element.startswith("x")) or (last and element.startswith("x")):
            raise ValueError(
                f"{path!r}: index element {element!r} must "
                + ("not start with 'x' (it is the last)" if last else "start with 'x'")
            )
        if len(digits) != 3 or not set(digits) <= _DIGITS:
            raise ValueError(f"{path!r}: index element {element!r} is not 3 decimal digits")
        if i == 0 and not last and digits == "000":
            raise ValueError(f"{path!r}: index has a leading zero group {element!r}")
        index = index * 1000 + int(digits)
    if index << (TILE_HEIGHT * (level + 1)) >= MAX_TREE_SIZE:  # its first leaf is past 2^63
        raise ValueError(f"{path!r}: tile {index} is beyond any log (sizes are below 2^63)")
    return TileRef(level=level, index=index, width=width, is_entries=is_entries)


def tile_width(level: int, index: int, size: int) -> int:
    """Hashes in tile ``(level, index)`` of a tree of ``size`` leaves: 256 when full, 1 to 255
    when it is the partial rightmost tile, 0 when the tile does not exist (tlog-tiles §Partial
    Tiles: the partial tile at level l has floor(size / 256**l) mod 256 hashes)."""
    if level < 0 or index < 0 or size < 0:
        raise ValueError("level, index and size must not be negative")
    nodes = size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, nodes - index * TILE_WIDTH))


# --- entry bundles --------------------------------------------------------------------------


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries as big-endian uint16 length-prefixed records (tlog-tiles §Log entries)."""
    if len(entries) > TILE_WIDTH:
        raise ValueError(f"an entry bundle holds at most {TILE_WIDTH} entries, got {len(entries)}")
    out = bytearray()
    for i, entry in enumerate(entries):
        if len(entry) > _MAX_ENTRY:
            raise ValueError(f"entry {i} is {len(entry)} bytes; the limit is {_MAX_ENTRY}")
        out += len(entry).to_bytes(2, "big")
        out += entry
    return bytes(out)


def decode_entry_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; ValueError on truncation or more than 256 entries."""
    entries: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(entries) == TILE_WIDTH:
            raise ValueError(f"entry bundle has more than {TILE_WIDTH} entries (offset {pos})")
        if end - pos < 2:
            raise ValueError(f"entry bundle truncated: 1 byte left at offset {pos}, need 2")
        length = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if end - pos < length:
            raise ValueError(
                f"entry bundle truncated: entry {len(entries)} at offset {pos - 2} declares "
                f"{length} bytes, {end - pos} left"
            )
        entries.append(bytes(data[pos : pos + length]))
        pos += length
    return entries


# --- reading the tree back ------------------------------------------------------------------


def _split_hashes(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _expand(hashes: list[bytes]) -> list[list[bytes]]:
    """Every complete node of the height-8 subtree a tile spans, level by level, bottom first:
    level k holds the roots of the aligned 2**k-hash blocks of the tile (9 levels when full)."""
    levels = [hashes]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def _push(levels: list[list[bytes]], leaf: bytes) -> None:
    """Append one hash to an expanded tile, completing the nodes it closes (one hash each)."""
    levels[0].append(leaf)
    k = 0
    while not len(levels[k]) & 1:
        if k + 1 == len(levels):
            levels.append([])
        below = levels[k]
        levels[k + 1].append(node_hash(below[-2], below[-1]))
        k += 1


def _level_starts(width: int) -> list[int]:
    """Byte offset of each level k ≥ 1 inside ``StoredTile.nodes``, then the total length."""
    starts = [0, 0]
    k = 1
    while width >> k:
        starts.append(starts[-1] + (width >> k) * HASH_SIZE)
        k += 1
    return starts


_STARTS = [_level_starts(width) for width in range(TILE_WIDTH + 1)]


def interior_size(width: int) -> int:
    """Bytes of interior nodes a tile of ``width`` hashes has (8,160 when full)."""
    return _STARTS[width][-1]


def interior_level(tile: StoredTile, k: int) -> bytes:
    """The hashes of level ``k`` inside a tile (0: the tile itself); ``b""`` for ``k`` ≥ 1 when
    the tile's interior nodes are not stored."""
    if k == 0:
        return tile.hashes
    starts = _STARTS[min(len(tile.hashes) // HASH_SIZE, TILE_WIDTH)]
    if not tile.nodes or k + 1 >= len(starts):
        return b""
    return tile.nodes[starts[k] : starts[k + 1]]


def _interior(levels: list[list[bytes]]) -> bytes:
    return b"".join(b"".join(level) for level in levels[1:])


def _levels_of(tile: StoredTile) -> list[list[bytes]]:
    """The tile expanded level by level, from its stored nodes when it has them."""
    hashes = _split_hashes(tile.hashes)
    if not tile.nodes:
        return _expand(hashes)
    starts = _STARTS[len(hashes)]
    return [hashes] + [
        _split_hashes(tile.nodes[starts[k] : starts[k + 1]]) for k in range(1, len(starts) - 1)
    ]


def _fetch(read_tile: ReadTile, level: int, index: int) -> StoredTile:
    try:
        got = read_tile(level, index)
    except LookupError as exc:
        raise TileNotFoundError(
            f"tile/{level}/{_encode_index(index)} is not stored", level=level, index=index
        ) from exc
    return checked_tile(got, level, index)


def checked_tile(got: bytes | StoredTile, level: int, index: int) -> StoredTile:
    """What a read returned, as a StoredTile whose shape holds: a whole number of hashes, at
    most 256, and interior nodes (when kept) that fit them; VerificationError otherwise."""
    tile = got if isinstance(got, StoredTile) else StoredTile(bytes(got))
    if len(tile.hashes) % HASH_SIZE or len(tile.hashes) > _FULL_BYTES:
        raise VerificationError(
            "stored tile is not a whole number of hashes, at most 256",
            expected=f"a multiple of {HASH_SIZE} up to {_FULL_BYTES} bytes",
            computed=len(tile.hashes),
            where=f"tile/{level}/{_encode_index(index)}",
        )
    if tile.nodes and len(tile.nodes) != interior_size(len(tile.hashes) // HASH_SIZE):
        raise VerificationError(
            "stored interior nodes do not fit the tile's width",
            expected=interior_size(len(tile.hashes) // HASH_SIZE),
            computed=len(tile.nodes),
            where=f"tile/{level}/{_encode_index(index)} nodes",
        )
    return tile


class _Expanded:
    """One tile with every complete node inside it, sliced out on demand."""

    __slots__ = ("hashes", "nodes", "width", "starts")

    def __init__(self, tile: StoredTile) -> None:
        self.hashes = tile.hashes
        self.width = len(tile.hashes) // HASH_SIZE
        self.nodes = tile.nodes or _interior(_expand(_split_hashes(tile.hashes)))
        self.starts = _STARTS[self.width]

    def node(self, k: int, j: int) -> bytes | None:
        """Node ``j`` of level ``k`` inside the tile (k = 0: the tile's own hashes)."""
        if j >= self.width >> k:
            return None
        if k == 0:
            return self.hashes[j * HASH_SIZE : (j + 1) * HASH_SIZE]
        at = self.starts[k] + j * HASH_SIZE
        return self.nodes[at : at + HASH_SIZE]


class TileHashSource:
    """A :class:`~auditmesh.ledger.merkle.HashSource` over stored tiles.

    ``subtree_hash(level, n)`` reads tile level ``level // 8`` and takes node ``n`` of level
    ``level % 8`` inside it: from the tile's stored interior nodes when the read returns a
    :class:`StoredTile` that has them, otherwise by hashing the tile once. Up to
    ``cache_tiles`` full tiles and as many partial ones are kept in LRUs. A node of a partial
    tile is final once it is complete (the log only appends), so a cached partial tile answers
    for the nodes it holds, and is read again only for a node beyond its width. Raises
    :class:`TileNotFoundError` for a missing or too-short tile and :class:`VerificationError`
    for a malformed one. A check of the storage itself (the sequencer's, before it signs) takes
    a new source, so it reads every tile as stored now.
    """

    __slots__ = ("_read", "_full", "_partial", "_cache_tiles")

    def __init__(self, read_tile: ReadTile, *, cache_tiles: int = 128) -> None:
        self._read = read_tile
        self._full: OrderedDict[tuple[int, int], _Expanded] = OrderedDict()
        self._partial: dict[tuple[int, int], _Expanded] = {}
        self._cache_tiles = cache_tiles

    def subtree_hash(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0:
            raise ValueError(f"subtree level and index must not be negative: {level}, {index}")
        tile_level, k = divmod(level, TILE_HEIGHT)
        first = index << k  # first hash of tree level 8·tile_level under the subtree
        tile_index, offset = divmod(first, TILE_WIDTH)
        key = (tile_level, tile_index)
        tile = self._full.get(key) or self._partial.get(key)
        found = None if tile is None else tile.node(k, offset >> k)
        if tile is not None and found is not None:
            if tile.width == TILE_WIDTH:
                self._full.move_to_end(key)
            return found
        tile = self._load(key)  # not cached, or the node lies beyond the width read last time
        found = tile.node(k, offset >> k)
        if found is None:
            raise TileNotFoundError(
                f"{tile_path(tile_level, tile_index, tile.width or None)} has {tile.width} "
                f"hashes; subtree (level {level}, index {index}) needs {offset + (1 << k)}",
                level=tile_level,
                index=tile_index,
            )
        return found

    def _load(self, key: tuple[int, int]) -> _Expanded:
        stored = _fetch(self._read, *key)
        limit = self._cache_tiles
        if len(stored.hashes) == _FULL_BYTES:
            tile = _Expanded(stored)
            self._partial.pop(key, None)
            if limit > 0:
                self._full[key] = tile
                if len(self._full) > limit:
                    self._full.popitem(last=False)
            return tile
        tile = _Expanded(stored)
        if limit > 0:
            self._partial.pop(key, None)
            self._partial[key] = tile
            if len(self._partial) > limit:
                del self._partial[next(iter(self._partial))]
        return tile


# --- writing the tree -----------------------------------------------------------------------


def tiles_after_append(
    old_size: int, new_leaf_hashes: Sequence[bytes], read_tile: ReadTile
) -> dict[tuple[int, int], StoredTile]:
    """Every tile that changes when ``new_leaf_hashes`` are appended to a tree of ``old_size``.

    Returns ``{(level, index): tile}`` with each tile's whole contents after the append
    (partial or full), its interior nodes included. ``read_tile`` supplies the existing partial
    tiles on the right edge; each must hold exactly the ``floor(old_size / 256**level) mod 256``
    hashes of the old tree, otherwise VerificationError (the stored tiles and ``old_size``
    disagree). Each new hash costs the one node hash it completes, no more.
    """
    if old_size < 0:
        raise ValueError(f"old tree size must not be negative, got {old_size}")
    for i, h in enumerate(new_leaf_hashes):
        if len(h) != HASH_SIZE:
            raise ValueError(f"new leaf hash {i} is {len(h)} bytes, not {HASH_SIZE}")
    out: dict[tuple[int, int], StoredTile] = {}
    # Hashes of tree level 8·L that the append creates, starting at node index old_n.
    new_nodes: list[bytes] = list(new_leaf_hashes)
    level = 0
    while new_nodes:
        old_n = old_size >> (TILE_HEIGHT * level)
        first_tile, kept = divmod(old_n, TILE_WIDTH)
        levels: list[list[bytes]] = [[]]
        if kept:
            stored = _fetch(read_tile, level, first_tile)
            if len(stored.hashes) != kept * HASH_SIZE:
                raise VerificationError(
                    "stored right-edge tile does not match the old tree size",
                    expected=kept * HASH_SIZE,
                    computed=len(stored.hashes),
                    where=f"{tile_path(level, first_tile)} for tree size {old_size}",
                )
            levels = _levels_of(stored)
        # Fill tiles left to right; each tile that fills up becomes one hash a level up
        # (tlog-tiles: a level-L hash is the MTH of a full level L-1 tile).
        above: list[bytes] = []
        tile_index = first_tile
        for position, leaf in enumerate(new_nodes, start=1):
            _push(levels, leaf)
            full = len(levels[0]) == TILE_WIDTH
            if full or position == len(new_nodes):
                out[(level, tile_index)] = StoredTile(b"".join(levels[0]), _interior(levels))
            if full:
                above.append(levels[TILE_HEIGHT][0])
                levels = [[]]
                tile_index += 1
        new_nodes = above
        level += 1
    return out
