"""Tests for auditmesh.ledger.tiles: C2SP tlog-tiles paths, entry bundles, the tile-backed
HashSource and the tiles an append writes."""

from __future__ import annotations

import hashlib
import random
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.ledger import tiles as tiles_module
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.merkle import (
    LeafHashes,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    node_hash,
    tree_root,
)
from auditmesh.ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    StoredTile,
    TileHashSource,
    TileNotFoundError,
    TileRef,
    decode_entry_bundle,
    encode_entry_bundle,
    entries_path,
    interior_level,
    interior_size,
    parse_tile_path,
    tile_path,
    tile_width,
    tiles_after_append,
)


def fake_leaf(i: int) -> bytes:
    """A cheap distinct 32-byte leaf hash."""
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


@cache
def leaves(n: int) -> tuple[bytes, ...]:
    return tuple(fake_leaf(i) for i in range(n))


@cache
def prefix_roots(n: int) -> tuple[bytes, ...]:
    """Root of every prefix of leaves(n), by TreeBuilder (independent of the tile code)."""
    builder = TreeBuilder()
    out = [builder.root()]
    for h in leaves(n):
        builder.append(h)
        out.append(builder.root())
    return tuple(out)


class TileStore:
    """In-memory tile storage driven the way the sequencer drives it."""

    def __init__(self) -> None:
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.size = 0
        self.reads: list[tuple[int, int]] = []

    def read(self, level: int, index: int) -> bytes:
        """The C2SP tile alone, as a remote tile server gives it."""
        self.reads.append((level, index))
        return self.tiles[(level, index)]

    def read_stored(self, level: int, index: int) -> StoredTile:
        """The tile with its interior nodes, as the ledger's store gives it."""
        self.reads.append((level, index))
        return StoredTile(self.tiles[(level, index)], self.nodes[(level, index)])

    def append(self, new: list[bytes] | tuple[bytes, ...]) -> dict[tuple[int, int], StoredTile]:
        written = tiles_after_append(self.size, new, self.read_stored)
        old, self.size = self.size, self.size + len(new)
        # Exactly the tiles whose width changed are written, each at its new width.
        changed = {
            (level, index)
            for level in range(4)
            for index in range((self.size >> (TILE_HEIGHT * level)) // TILE_WIDTH + 1)
            if tile_width(level, index, old) != tile_width(level, index, self.size)
        }
        assert set(written) == changed
        for (level, index), tile in written.items():
            assert len(tile.hashes) == 32 * tile_width(level, index, self.size)
            assert len(tile.nodes) == interior_size(tile_width(level, index, self.size))
            self.tiles[(level, index)] = tile.hashes
            self.nodes[(level, index)] = tile.nodes
        return written


# --- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ((0, 0), "tile/0/000"),
        ((0, 1234067), "tile/0/x001/x234/067"),
        ((1, 1234, 5), "tile/1/x001/234.p/5"),
        ((2, 999, 256), "tile/2/999"),
        ((2, 1000, 255), "tile/2/x001/000.p/255"),
        ((63, 0, 255), "tile/63/000.p/255"),
        ((0, 10**9, None), "tile/0/x001/x000/x000/000"),
    ],
)
def test_tile_path(args: tuple[int, ...], path: str) -> None:
    assert tile_path(*args) == path
    ref = parse_tile_path(path)
    assert (ref.level, ref.index, ref.is_entries) == (args[0], args[1], False)
    assert ref.width == (args[2] if len(args) > 2 and args[2] else 256)
    assert ref.path() == path


def test_entries_path() -> None:
    assert entries_path(0) == "tile/entries/000"
    assert entries_path(1234067, 17) == "tile/entries/x001/x234/067.p/17"
    assert parse_tile_path("tile/entries/x001/x234/067.p/17") == TileRef(0, 1234067, 17, True)
    assert parse_tile_path("tile/entries/005") == TileRef(0, 5, 256, True)
    assert not parse_tile_path("tile/entries/005").is_partial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((64, 0), "level must be 0 to 63"),
        ((-1, 0), "level must be 0 to 63"),
        ((0, -1), "index must not be negative"),
        ((0, 0, 0), "width must be 1 to 256"),
        ((0, 0, 257), "width must be 1 to 256"),
    ],
)
def test_tile_path_rejects(args: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tile_path(*args)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 63), st.data(), st.integers(1, 256), st.booleans())
def test_path_round_trip(level: int, data: st.DataObject, width: int, is_entries: bool) -> None:
    level = 0 if is_entries else level
    last = -(-(2**63) // 256 ** (level + 1)) - 1  # the last tile whose first leaf is below 2^63
    index = data.draw(st.integers(0, min(last, 10**15)))
    ref = TileRef(level, index, width, is_entries)
    path = ref.path()
    assert parse_tile_path(path) == ref
    assert ref.is_partial == (width < 256)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tiles/0/000", "not a tile path"),
        ("tile/0/x999/x999/x999/x999/x999/x999/x999/999", "beyond any log"),
        ("tile/entries/x999/x999/x999/x999/x999/x999/999", "beyond any log"),
        ("tile/0", "not a tile path"),
        ("/tile/0/000", "not a tile path"),
        ("tile/00/000", "level '00' has leading zeros"),
        ("tile/64/000", "level 64 is above 63"),
        ("tile/a/000", "level 'a' is not a decimal number"),
        ("tile/-1/000", "level '-1' is not a decimal number"),
        ("tile/0/1", "'1' is not 3 decimal digits"),
        ("tile/0/0001", "'0001' is not 3 decimal digits"),
        ("tile/0/\u0661\u0662\u0663", "is not 3 decimal digits"),
        ("tile/0/x000/001", "leading zero group 'x000'"),
        ("tile/0/001/002", "'001' must start with 'x'"),
        ("tile/0/x001", "'x001' must not start with 'x'"),
        ("tile/0/000/", "'000' must start with 'x'"),
        ("tile/0/000.p/0", "partial width must be 1 to 255, got 0"),
        ("tile/0/000.p/256", "a full tile has no .p/ suffix"),
        ("tile/0/000.p/300", "partial width must be 1 to 255, got 300"),
        ("tile/0/000.p/05", "partial width '05' has leading zeros"),
        ("tile/0/000.p/", "partial width '' is not a decimal number"),
        ("tile/0/000.p", "'000.p' is not 3 decimal digits"),
        ("tile/entries/x001.p/3", "'x001' must not start with 'x'"),
    ],
)
def test_parse_tile_path_rejects(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_tile_path(path)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(
            st.sampled_from(["tile", "entries", "0", "7", "63", "64", "x001", "000", "123", ".p"]),
            max_size=6,
        ).map("/".join),
    )
)
def test_parse_tile_path_fuzz(path: str) -> None:
    """Anything either fails with ValueError or is the canonical path of what it parses to."""
    try:
        ref = parse_tile_path(path)
    except ValueError:
        return
    assert ref.path() == path


def test_tile_width_matches_spec_example() -> None:
    # tlog-tiles §Partial Tiles: a tree of 70,000 has 273 full level-0 tiles and one of width
    # 112, one full level-1 tile and one of width 17, and one level-2 tile of width 1.
    size = 70_000
    assert [tile_width(0, i, size) for i in (0, 272, 273, 274)] == [256, 256, 112, 0]
    assert [tile_width(1, i, size) for i in (0, 1, 2)] == [256, 17, 0]
    assert [tile_width(2, i, size) for i in (0, 1)] == [1, 0]
    assert tile_width(3, 0, size) == 0
    assert tile_width(1, 0, 256) == 1  # "a tree of size 256 ... a partial level 1 tile of width 1"
    with pytest.raises(ValueError, match="negative"):
        tile_width(0, 0, -1)


# --- entry bundles --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=256))
def test_entry_bundle_round_trip(entries: list[bytes]) -> None:
    data = encode_entry_bundle(entries)
    assert len(data) == sum(2 + len(e) for e in entries)
    assert decode_entry_bundle(data) == entries


def test_entry_bundle_encoding() -> None:
    assert encode_entry_bundle([b"", b"ab", b"\x00" * 256]) == (
        b"\x00\x00" + b"\x00\x02ab" + b"\x01\x00" + b"\x00" * 256
    )
    big = b"x" * 65535
    assert decode_entry_bundle(encode_entry_bundle([big])) == [big]
    with pytest.raises(ValueError, match="entry 1 is 65536 bytes; the limit is 65535"):
        encode_entry_bundle([b"", b"x" * 65536])
    with pytest.raises(ValueError, match="at most 256 entries, got 257"):
        encode_entry_bundle([b""] * 257)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "truncated: 1 byte left at offset 0, need 2"),
        (b"\x00\x01a\x00", "truncated: 1 byte left at offset 3, need 2"),
        (b"\x00\x05abc", "entry 0 at offset 0 declares 5 bytes, 3 left"),
        (b"\x00\x00" * 257, "more than 256 entries"),
    ],
)
def test_entry_bundle_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_entry_bundle(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_entry_bundle_decode_fuzz(data: bytes) -> None:
    try:
        entries = decode_entry_bundle(data)
    except ValueError:
        return
    assert encode_entry_bundle(entries) == data


# --- tiles written by appends, read back as a HashSource ------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_incremental_tiles_serve_the_tree(batches: list[int], rnd: random.Random) -> None:
    total = sum(batches)
    all_leaves = leaves(total)
    expected = prefix_roots(total)
    store = TileStore()
    checkpoints = [0]
    for count in batches:
        store.append(all_leaves[store.size : store.size + count])
        checkpoints.append(store.size)
        source = TileHashSource(store.read)
        assert tree_root(source, store.size) == expected[store.size]
    reference = LeafHashes(all_leaves)
    sizes = {*checkpoints, *(rnd.randint(0, total) for _ in range(20))}
    # The tiles alone (hashing inside them) and the tiles with their stored interior nodes.
    for source in (TileHashSource(store.read), TileHashSource(store.read_stored)):
        for size in sizes:
            assert tree_root(source, size) == expected[size]
        for _ in range(15):
            if not total:
                break
            size = rnd.randint(1, total)
            index = rnd.randrange(size)
            assert inclusion_proof(index, size, source) == inclusion_proof(index, size, reference)
            size1 = rnd.randint(0, size)
            assert consistency_proof(size1, size, source) == consistency_proof(
                size1, size, reference
            )


def _interior_by_roots(hashes: bytes) -> bytes:
    """A tile's interior nodes by definition: node j of level k is the MTH of hashes
    j·2^k … (j+1)·2^k - 1 (RFC 9162 §2.1.1), computed independently of the tile code."""
    items = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
    out = b""
    k = 1
    while len(items) >> k:
        for j in range(len(items) >> k):
            out += LeafHashes(items[j << k : (j + 1) << k]).subtree_hash(k, 0)
        k += 1
    return out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 600), min_size=1, max_size=6))
def test_interior_nodes_written_by_appends_are_the_subtree_roots(batches: list[int]) -> None:
    store = TileStore()
    for count in batches:
        store.append(leaves(sum(batches))[store.size : store.size + count])
    for key, hashes in store.tiles.items():
        assert store.nodes[key] == _interior_by_roots(hashes), key
    for key in store.tiles:
        tile = store.read_stored(*key)
        width = len(tile.hashes) // 32
        for k in range(1, 9):
            assert len(interior_level(tile, k)) == 32 * (width >> k)
    assert interior_size(256) == 255 * 32 and interior_size(1) == 0 and interior_size(3) == 32


def test_proofs_from_stored_interior_nodes_hash_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = TileStore()
    store.append(leaves(70_000))
    hashed: list[bytes] = []

    def counting_node_hash(left: bytes, right: bytes) -> bytes:
        hashed.append(left)
        return node_hash(left, right)

    monkeypatch.setattr(tiles_module, "node_hash", counting_node_hash)
    reference = LeafHashes(leaves(70_000))
    for index in (0, 31_337, 65_535, 69_999):
        stored = TileHashSource(store.read_stored)
        assert inclusion_proof(index, 70_000, stored) == inclusion_proof(index, 70_000, reference)
    assert not hashed
    TileHashSource(store.read).subtree_hash(7, 0)  # the bare tile: hashed on read
    assert len(hashed) == 255


def test_tiles_without_interior_nodes_still_grow_and_prove() -> None:
    """A ledger written before interior nodes were kept: appends expand the old right edge."""
    store = TileStore()
    store.append(leaves(1000)[:300])
    store.nodes = dict.fromkeys(store.nodes, b"")
    store.append(leaves(1000)[300:])
    assert store.nodes[(0, 1)] == _interior_by_roots(store.tiles[(0, 1)])
    reference = LeafHashes(leaves(1000))
    source = TileHashSource(store.read_stored)
    for index in (0, 299, 300, 999):
        assert inclusion_proof(index, 1000, source) == inclusion_proof(index, 1000, reference)


def test_interior_nodes_of_the_wrong_length_are_refused() -> None:
    store = TileStore()
    store.append(leaves(300))
    store.nodes[(0, 0)] = store.nodes[(0, 0)][:-32]
    with pytest.raises(VerificationError, match="interior nodes do not fit") as e:
        TileHashSource(store.read_stored).subtree_hash(3, 0)
    assert e.value.where == "tile/0/000 nodes" and e.value.expected == 255 * 32


def test_every_size_of_a_small_tiled_log() -> None:
    n = 2 * 256 * 2 + 77
    store = TileStore()
    rnd = random.Random(7)
    while store.size < n:
        store.append(leaves(n)[store.size : store.size + rnd.choice((1, 3, 255, 256, 257, 600))])
    source = TileHashSource(store.read)
    expected = prefix_roots(store.size)
    reference = LeafHashes(leaves(store.size))
    for size in range(store.size + 1):
        assert tree_root(source, size) == expected[size], size
    for size in range(1, store.size + 1, 17):
        for index in (0, size // 2, size - 1):
            assert inclusion_proof(index, size, source) == inclusion_proof(index, size, reference)
        for size1 in (1, size // 3, size - 1):
            assert consistency_proof(size1, size, source) == consistency_proof(
                size1, size, reference
            )


def test_large_log_has_level_2_tiles() -> None:
    n = 70_000
    all_leaves = leaves(n)
    store = TileStore()
    rnd = random.Random(1)
    while store.size < n:
        count = rnd.choice((1, 2, 255, 256, 1000, 4097, 9000))
        store.append(all_leaves[store.size : store.size + count])
    assert store.size >= n
    size = store.size
    widths = {key: len(data) // 32 for key, data in store.tiles.items()}
    assert widths[(2, 0)] == size >> 16 == 1
    for level in (0, 1):
        if (size >> (8 * level)) % 256:  # the right-edge partial tile, if any, has that width
            assert widths[(level, size >> (8 * level + 8))] == (size >> (8 * level)) % 256
    assert sum(1 for (level, _), w in widths.items() if level == 0 and w == 256) == size >> 8

    # Level-1 tiles hold the level-8 subtree hashes a streaming verifier recomputes.
    level8: dict[int, bytes] = {}
    builder = TreeBuilder(on_complete=lambda lv, i, h: level8.__setitem__(i, h), levels=[8])
    builder.extend(all_leaves[:size])
    stored = b"".join(store.tiles[(1, i)] for i in range((size >> 8) // 256 + 1))
    assert stored == b"".join(level8[i] for i in range(size >> 8))

    source = TileHashSource(store.read)
    reference = LeafHashes(all_leaves[:size])
    expected = prefix_roots(size)
    for s in (1, 255, 256, 65_535, 65_536, 65_537, 69_999, size, *rnd.sample(range(size), 30)):
        assert tree_root(source, s) == expected[s], s
    for _ in range(30):
        s = rnd.randint(1, size)
        index = rnd.randrange(s)
        assert inclusion_proof(index, s, source) == inclusion_proof(index, s, reference)
        s1 = rnd.randint(0, s)
        assert consistency_proof(s1, s, source) == consistency_proof(s1, s, reference)


def test_proof_over_ten_million_leaves_touches_few_tiles() -> None:
    size = 10_000_000
    read: set[tuple[int, int]] = set()

    def read_tile(level: int, index: int) -> bytes:
        width = tile_width(level, index, size)
        if not width:
            raise KeyError((level, index))
        read.add((level, index))
        seed = f"{level}/{index}".encode()
        return b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(width))

    for index in (0, 4_999_999, size - 1):
        read.clear()
        inclusion_proof(index, size, TileHashSource(read_tile))
        assert len(read) <= 6, sorted(read)
    read.clear()
    consistency_proof(3_333_333, size, TileHashSource(read_tile))
    assert len(read) <= 8, sorted(read)


# --- TileHashSource behaviour ---------------------------------------------------------------


def test_partial_tiles_are_cached_for_the_nodes_they_hold() -> None:
    store = TileStore()
    store.append(leaves(700)[:3])
    source = TileHashSource(store.read)
    assert source.subtree_hash(1, 0) == LeafHashes(leaves(700)).subtree_hash(1, 0)
    with pytest.raises(TileNotFoundError, match=r"tile/0/000\.p/3 has 3 hashes; .* needs 4") as e:
        source.subtree_hash(1, 1)
    assert (e.value.level, e.value.index) == (0, 0)
    store.append(leaves(700)[3:600])  # the partial tile grows and fills up
    reference = LeafHashes(leaves(600))
    assert source.subtree_hash(1, 1) == reference.subtree_hash(1, 1)
    store.reads.clear()
    for level in range(9):
        assert source.subtree_hash(level, 0) == reference.subtree_hash(level, 0)
    # Levels 0-7 come from tile (0, 0), cached since it was read full just above; level 8 is
    # the first hash of tile (1, 0), partial (width 2), read once.
    assert store.reads == [(1, 0)]
    store.reads.clear()
    for _ in range(2):
        assert source.subtree_hash(0, 599) == reference.subtree_hash(0, 599)
        assert source.subtree_hash(6, 8) == reference.subtree_hash(6, 8)
    assert store.reads == [(0, 2)]  # partial tile 2 (width 88) read once for both nodes
    # The log grows: a node beyond the cached width reads the tile again, and the nodes it
    # held are the same (complete nodes never change in an append-only log).
    store.append(leaves(700)[600:])
    store.reads.clear()
    grown = LeafHashes(leaves(700))
    assert source.subtree_hash(0, 650) == grown.subtree_hash(0, 650)
    assert source.subtree_hash(6, 9) == grown.subtree_hash(6, 9)
    assert source.subtree_hash(6, 8) == grown.subtree_hash(6, 8)
    assert store.reads == [(0, 2)]
    # Bytes altered underneath a cached tile are seen by a new source (what the sequencer
    # takes to check the tree before it signs), not by the one that cached the honest ones.
    store.tiles[(0, 2)] = store.tiles[(0, 2)][::-1]
    assert source.subtree_hash(6, 8) == grown.subtree_hash(6, 8)
    assert TileHashSource(store.read).subtree_hash(6, 8) != grown.subtree_hash(6, 8)


def test_cache_is_bounded_lru() -> None:
    store = TileStore()
    store.append(leaves(4 * 256))
    source = TileHashSource(store.read, cache_tiles=2)
    for index in (0, 1, 0, 2, 0, 1):
        source.subtree_hash(7, 2 * index + 1)  # the right half of level-0 tile `index`
    assert store.reads == [(0, 0), (0, 1), (0, 2), (0, 1)]
    uncached = TileHashSource(store.read, cache_tiles=0)
    store.reads.clear()
    uncached.subtree_hash(0, 0)
    uncached.subtree_hash(0, 1)
    assert store.reads == [(0, 0), (0, 0)]


def test_tile_source_errors() -> None:
    tiles = {(0, 0): b"\x00" * 33, (0, 1): b"\x00" * (32 * 257)}
    source = TileHashSource(lambda level, index: tiles[(level, index)])
    with pytest.raises(TileNotFoundError, match="tile/0/002 is not stored") as e:
        source.subtree_hash(0, 512)
    assert isinstance(e.value, LookupError) and isinstance(e.value.__cause__, KeyError)
    with pytest.raises(VerificationError, match="not a whole number of hashes") as v:
        source.subtree_hash(0, 0)
    assert v.value.computed == 33 and v.value.where == "tile/0/000"
    with pytest.raises(VerificationError, match="not a whole number of hashes"):
        source.subtree_hash(0, 256)
    with pytest.raises(ValueError, match="negative"):
        source.subtree_hash(-1, 0)


def test_tiles_after_append_errors() -> None:
    store = TileStore()
    assert tiles_after_append(0, [], store.read) == {}
    store.append(leaves(10))
    with pytest.raises(VerificationError, match="does not match the old tree size") as e:
        tiles_after_append(9, leaves(11)[10:], store.read)
    assert (e.value.expected, e.value.computed) == (9 * 32, 10 * 32)
    with pytest.raises(TileNotFoundError, match="tile/0/001 is not stored"):
        tiles_after_append(300, leaves(11)[10:], store.read)
    with pytest.raises(ValueError, match="new leaf hash 1 is 31 bytes"):
        tiles_after_append(10, [fake_leaf(10), b"\x00" * 31], store.read)
    with pytest.raises(ValueError, match="negative"):
        tiles_after_append(-1, [], store.read)
    assert tiles_after_append(10, [], store.read) == {}


def test_tiles_after_append_exact_boundaries() -> None:
    store = TileStore()
    written = store.append(leaves(256))
    assert sorted(written) == [(0, 0), (1, 0)]  # full level-0 tile, level-1 tile of width 1
    written = store.append(leaves(257)[256:])
    assert sorted(written) == [(0, 1)]
    written = store.append(leaves(512)[257:])
    assert sorted(written) == [(0, 1), (1, 0)]
    assert len(store.tiles[(1, 0)]) == 64
