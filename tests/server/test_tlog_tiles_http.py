"""The tlog-tiles routes of a real server, against https://c2sp.org/tlog-tiles: what a
standard client (Go's sumdb/tlog tile reader, Tessera's and Sunlight's clients) reads."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from auditmesh.events import canonical_bytes, encode_ndjson
from auditmesh.ledger import merkle, tiles
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("tiles") / "data"
    with ServerProcess(data, extra=["--checkpoint-interval", "0.2"]) as running:
        yield running


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> list[bytes]:
    """300 entries: a full level-0 tile, a partial one of 44, a partial level-1 tile of 1."""
    events = generate(300, seed=5)
    posted = httpx.post(server.url + "/v1/events", content=encode_ndjson(events))
    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
    while b"\n300\n" not in httpx.get(server.url + "/log/checkpoint").content:
        assert time.monotonic() < deadline, "no checkpoint of size 300"
        time.sleep(0.1)
    return [canonical_bytes(e) for e in events]


def get(server: ServerProcess, path: str) -> httpx.Response:
    return httpx.get(server.url + "/log/" + path)


def test_tile_hashes_are_the_spec_layout(server: ServerProcess, stored: list[bytes]) -> None:
    # tlog-tiles §"Merkle Tree": "the n-th tile at level l ... is the sequence of
    # MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l])"; "a tree of size 256 will
    # be represented by a full level 0 tile and a partial level 1 tile of width 1".
    leaves = [merkle.leaf_hash(d) for d in stored]
    assert get(server, "tile/1/000.p/1").content == merkle.root(leaves[:256])
    assert get(server, "tile/0/001.p/44").content == b"".join(leaves[256:300])
    # "Empty tiles MUST NOT be served."
    assert get(server, "tile/2/000.p/1").status_code == 404
    assert get(server, "tile/0/001.p/45").status_code == 404


def test_a_partial_of_a_full_tile_is_its_prefix(server: ServerProcess, stored: list[bytes]) -> None:
    # A client holding a checkpoint of size 10 asks for tile/0/000.p/10 after the tile filled.
    leaves = [merkle.leaf_hash(d) for d in stored]
    assert get(server, "tile/0/000.p/10").content == b"".join(leaves[:10])
    bundle = get(server, "tile/entries/000.p/10")
    assert tiles.decode_entry_bundle(bundle.content) == stored[:10]


@pytest.mark.parametrize(
    "path", ["tile/0/000", "tile/entries/000", "tile/0/001.p/44", "tile/entries/001.p/44"]
)
def test_tiles_and_bundles_are_cached_long(
    server: ServerProcess, stored: list[bytes], path: str
) -> None:
    # tlog-tiles §"Merkle Tree" and §"Log entries": "This endpoint is immutable, so its
    # caching headers SHOULD be long-lived." A partial tile's path names its width, so its
    # bytes never change either: tile/0/001.p/44 is the same 44 hashes for ever.
    response = get(server, path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    cache = response.headers.get("cache-control", "")
    assert "max-age=31536000" in cache and "immutable" in cache, cache


def test_a_tile_beyond_the_log_is_not_cached(server: ServerProcess, stored: list[bytes]) -> None:
    # It will exist once the log grows: a 404 must not stick in a cache.
    response = get(server, "tile/0/001")
    assert response.status_code == 404
    assert "immutable" not in response.headers.get("cache-control", "")
