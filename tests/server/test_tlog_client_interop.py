"""client.py RemoteLog following a tlog-tiles log that is not ours, but follows the spec.

The log here is an in-memory C2SP tlog-tiles log behind an httpx MockTransport: its tiles,
entry bundles and checkpoint are built with the ledger's pure functions, and it serves only
what https://c2sp.org/tlog-tiles obliges a log to serve (not everything our server keeps).
"""

from __future__ import annotations

import httpx

from auditmesh.client import RemoteLog
from auditmesh.ledger import merkle, tiles
from auditmesh.ledger.checkpoint import Checkpoint
from auditmesh.ledger.note import Signer, Verifier, generate_key, sign
from auditmesh.ledger.verify import verify_log

ORIGIN = "example.com/elsewhere"
SKEY, VKEY = generate_key(ORIGIN, bytes([3]) * 32)
SIGNER, VERIFIER = Signer.from_skey(SKEY), Verifier.from_vkey(VKEY)


class SpecLog:
    """A log of `size` entries whose served checkpoint is for `checkpoint_size` (<= size)."""

    def __init__(self, size: int, checkpoint_size: int) -> None:
        self.entries = [b"entry %d" % i for i in range(size)]
        leaves = [merkle.leaf_hash(e) for e in self.entries]
        self.tiles = tiles.tiles_after_append(0, leaves, lambda level, index: b"")
        root = merkle.root(leaves[:checkpoint_size])
        self.checkpoint = Checkpoint(ORIGIN, checkpoint_size, root)
        self.note = sign(self.checkpoint.to_text(), [SIGNER])
        self.size = size
        self.keep_old_partials = True
        self.requests: list[str] = []

    def _tile(self, ref: tiles.TileRef) -> bytes | None:
        if ref.is_entries:
            start = ref.index * tiles.TILE_WIDTH
            have = self.entries[start : start + tiles.TILE_WIDTH]
            data = have[: ref.width]
            return tiles.encode_entry_bundle(data) if len(data) == ref.width else None
        stored = self.tiles.get((ref.level, ref.index))
        if stored is None or len(stored.hashes) < ref.width * 32:
            return None
        return stored.hashes[: ref.width * 32]

    def _current_width(self, ref: tiles.TileRef) -> int:
        level = 0 if ref.is_entries else ref.level
        return tiles.tile_width(level, ref.index, self.size)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(path)
        if path == "/log/checkpoint":
            return httpx.Response(200, content=self.note)
        ref = tiles.parse_tile_path(path.removeprefix("/log/"))
        # tlog-tiles §"Partial Tiles": "Logs ... MAY delete any partial tile once the
        # corresponding full tile is either available".
        full = self._current_width(ref) == tiles.TILE_WIDTH
        if ref.is_partial and not self.keep_old_partials and full:
            return httpx.Response(404)
        data = self._tile(ref)
        return httpx.Response(404) if data is None else httpx.Response(200, content=data)


def remote(log: SpecLog) -> RemoteLog:
    return RemoteLog("http://log.test", transport=httpx.MockTransport(log.handler))


def verified(log: SpecLog) -> int:
    reader = remote(log)
    try:
        return verify_log(reader, VERIFIER).size
    finally:
        reader.close()


def test_a_log_that_keeps_its_partial_tiles_verifies() -> None:
    assert verified(SpecLog(600, 300)) == 300


def test_a_partial_tile_deleted_once_full_falls_back_to_the_full_tile() -> None:
    """tlog-tiles §"Partial Tiles": logs "MAY delete any partial tile once the corresponding
    full tile is either available", and clients "MAY fetch the full tile in parallel as a
    fallback in case the partial tile is not available anymore". A client that does not
    fall back cannot follow a conforming log (e.g. Tessera with partial-tile garbage
    collection) from a checkpoint whose partial tiles have since filled up."""
    log = SpecLog(600, 300)  # 300 = a full tile and a partial one of 44; at 600 it is full
    log.keep_old_partials = False
    assert verified(log) == 300
    assert "/log/tile/0/001" in log.requests and "/log/tile/entries/001" in log.requests


def test_a_full_tile_is_not_fetched_when_the_partial_one_is_there() -> None:
    log = SpecLog(600, 300)
    assert verified(log) == 300
    assert "/log/tile/0/001" not in log.requests
