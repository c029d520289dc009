"""Inclusion-proof latency at 1M and 10M leaves, read from a SQLite tile store.

The tile store is built without events: synthetic leaf hashes (SHA-256 of the 8-byte big-endian
index) go through `tiles.tiles_after_append` in chunks of a million and are written with
`SQLiteStore.write(start, [], tiles)` — the same tiles table and reads the server uses. Each
proof is `merkle.inclusion_proof(index, size, TileHashSource(store.read_stored_tile))` for a
random index (tiles with their stored interior nodes, as `Log.inclusion_proof` reads them),
checked with `merkle.verify_inclusion` against the root read from the same tiles:
  * cold: a new TileHashSource per proof (no tile LRU; SQLite's and the OS's page caches are
    warm, as on a server that has been running);
  * warm: one TileHashSource (LRU of 128 expanded tiles) shared by all proofs, after a warm-up.
The peer: `os.pread` of one 8 KiB tile at a random offset of a flat file of the same leaf hashes
— one read, no hashing, the floor under any tiled proof.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from auditmesh.ledger import merkle, tiles
from auditmesh.store.sqlite import SQLiteStore
from bench.common import Figure, Target, fmt, percentile, progress

SECTION = "inclusion proof"
TARGET = Target("< 1 ms", 1000.0, higher_is_better=False)
_TILE_BYTES = tiles.TILE_WIDTH * merkle.HASH_SIZE


@dataclass(frozen=True, slots=True)
class ProofOptions:
    sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    proofs: int = 2_000
    chunk: int = 1_000_000


def synthetic_leaf(index: int) -> bytes:
    return hashlib.sha256(index.to_bytes(8, "big")).digest()


def build(size: int, work: Path, chunk: int) -> tuple[SQLiteStore, Path]:
    """A tile store (and a flat file of the leaf hashes, for the peer) for a `size`-leaf tree."""
    work.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(work)
    flat = work / "leaves.bin"
    started = time.perf_counter()
    sha = hashlib.sha256
    written = 0
    with open(flat, "wb") as out:
        for start in range(0, size, chunk):
            end = min(start + chunk, size)
            leaves = [sha(i.to_bytes(8, "big")).digest() for i in range(start, end)]
            updates = tiles.tiles_after_append(start, leaves, store.read_stored_tile)
            store.write(start, [], updates)
            written += len(updates)
            out.write(b"".join(leaves))
            progress(
                f"tile store {size:,}: {end:,} leaves, {written:,} tile writes "
                f"({time.perf_counter() - started:.0f} s)"
            )
    return store, flat


@dataclass(frozen=True, slots=True)
class Latencies:
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, micros: list[float]) -> Latencies:
        micros.sort()
        return cls(percentile(micros, 50), percentile(micros, 99), sum(micros) / len(micros))


def measure(size: int, options: ProofOptions, work: Path) -> list[Figure]:
    store, flat = build(size, work, options.chunk)
    reads = 0

    def counted(level: int, index: int) -> tiles.StoredTile:
        nonlocal reads
        reads += 1
        return store.read_stored_tile(level, index)

    root = merkle.tree_root(tiles.TileHashSource(store.read_tile), size)  # the bare tiles
    if size <= 2_000_000:  # cross-check the tiles against an in-memory tree (cheap here)
        expected = merkle.root([synthetic_leaf(i) for i in range(size)])
        assert root == expected, "tile store root differs from the in-memory tree"
    rng = random.Random(size)
    indices = [rng.randrange(size) for _ in range(options.proofs)]

    cold: list[float] = []
    verify: list[float] = []
    clock = time.perf_counter
    for index in indices:
        source = tiles.TileHashSource(counted)
        start = clock()
        proof = merkle.inclusion_proof(index, size, source)
        cold.append((clock() - start) * 1e6)
        leaf = synthetic_leaf(index)
        start = clock()
        merkle.verify_inclusion(leaf, index, size, proof, root)
        verify.append((clock() - start) * 1e6)
    cold_reads = reads / len(indices)

    shared = tiles.TileHashSource(store.read_stored_tile)
    for index in rng.sample(range(size), min(200, size)):
        merkle.inclusion_proof(index, size, shared)
    warm: list[float] = []
    for index in indices:
        start = clock()
        proof_w = merkle.inclusion_proof(index, size, shared)
        warm.append((clock() - start) * 1e6)
        merkle.verify_inclusion(synthetic_leaf(index), index, size, proof_w, root)

    fd = os.open(flat, os.O_RDONLY)
    try:
        tiles_in_file = max(1, size // tiles.TILE_WIDTH)
        peer: list[float] = []
        for index in indices:
            offset = (index // tiles.TILE_WIDTH % tiles_in_file) * _TILE_BYTES
            start = time.perf_counter()
            os.pread(fd, _TILE_BYTES, offset)
            peer.append((time.perf_counter() - start) * 1e6)
    finally:
        os.close(fd)
    store.close()
    shutil.rmtree(work)

    c, w, v, p = (Latencies.of(x) for x in (cold, warm, verify, peer))
    label = f"{size / 1e6:g}M leaves"
    print(
        f"{label}: {options.proofs:,} proofs, {len(proof_w)} hashes each, "
        f"{cold_reads:.1f} tile reads per cold proof\n"
        f"  cold proof   p50 {fmt(c.p50, 'µs'):>10}  p99 {fmt(c.p99, 'µs'):>10}  "
        f"({c.p50 / p.p50:,.0f} × peer p50)\n"
        f"  warm proof   p50 {fmt(w.p50, 'µs'):>10}  p99 {fmt(w.p99, 'µs'):>10}  "
        f"({w.p50 / p.p50:,.0f} × peer p50)\n"
        f"  verify_inclusion p50 {fmt(v.p50, 'µs'):>6}  p99 {fmt(v.p99, 'µs'):>10}\n"
        f"  peer pread 8 KiB p50 {fmt(p.p50, 'µs'):>6}  p99 {fmt(p.p99, 'µs'):>10}",
        flush=True,
    )
    peer_label = "pread 8 KiB tile"
    return [
        Figure(SECTION, f"{label}, cold, p50", c.p50, "µs", peer_label, p.p50, TARGET),
        Figure(SECTION, f"{label}, cold, p99", c.p99, "µs", peer_label, p.p99, TARGET),
        Figure(SECTION, f"{label}, warm, p50", w.p50, "µs", peer_label, p.p50, TARGET),
        Figure(SECTION, f"{label}, warm, p99", w.p99, "µs", peer_label, p.p99, TARGET),
        Figure(SECTION, f"{label}, verify_inclusion p50", v.p50, "µs"),
    ]


def run(options: ProofOptions, work: Path) -> list[Figure]:
    print(
        f"\n== Inclusion proofs from SQLite tiles: {', '.join(f'{s:,}' for s in options.sizes)}"
        " leaves ==",
        flush=True,
    )
    figures: list[Figure] = []
    for size in options.sizes:
        figures += measure(size, options, work / f"tiles-{size}")
    return figures
