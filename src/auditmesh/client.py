"""Client of a running `auditmesh server`: the API and the tlog-tiles tree it serves.

`RemoteLog` is a `verify.LogReader` over C2SP tlog-tiles, so `log verify --url` checks a
server exactly as it checks a local data directory, trusting nothing it is sent.
The transport is httpx's, so tests can hand in any httpx transport.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx

from auditmesh.ledger import tiles
from auditmesh.ledger.checkpoint import Checkpoint


class ServerError(Exception):
    """The server answered with an error or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of an error answer, None if there was none


# What a server may send, at most: a verifier must not be exhausted by one that lies.
# C2SP signed-note §"Format": a verifier "MUST accept at least up to 16 signatures", and
# "post-quantum signatures can be up to nearly 5kB" (6.7 kB of base64 each); note.py takes
# up to 100 signature lines, as Go's note.Open. 1 MiB holds 100 of those and the text.
MAX_CHECKPOINT_BYTES = 1024 * 1024
MAX_TILE_BYTES = tiles.TILE_WIDTH * 32
MAX_BUNDLE_BYTES = tiles.TILE_WIDTH * (2 + 0xFFFF)  # 256 entries of 16-bit length
REQUEST_DEADLINE_S = 120.0  # a whole response, however slowly it trickles in


def _get(client: httpx.Client, path: str, limit: int) -> bytes:
    """The body of GET `path`, refused past `limit` bytes or `REQUEST_DEADLINE_S`."""
    deadline = time.monotonic() + REQUEST_DEADLINE_S
    try:
        with client.stream("GET", path) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ServerError(f"GET {path}: the server sent more than {limit} bytes")
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"GET {path}: no whole answer within {REQUEST_DEADLINE_S:g} s"
                    )
    except httpx.HTTPError as exc:
        raise ServerError(f"cannot reach {client.base_url}: {exc}") from exc
    if response.status_code != 200:
        text = bytes(body).decode(errors="replace").strip()
        raise ServerError(
            f"GET {path}: {response.status_code} {text[:500]}", status=response.status_code
        )
    return bytes(body)


def _get_partial(client: httpx.Client, partial: str, full: str, limit: int) -> bytes:
    """GET the partial tile or bundle `partial`, or if it is gone (404), the full one `full`
    it has become. tlog-tiles §"Partial Tiles": logs "MAY delete any partial tile once the
    corresponding full tile is either available", and clients "MAY fetch the full tile ... as
    a fallback in case the partial tile is not available anymore". The caller takes the first
    W hashes or entries, which are the partial tile's: a full tile extends it."""
    try:
        return _get(client, partial, limit)
    except ServerError as exc:
        if exc.status != 404:
            raise
        return _get(client, full, limit)


class RemoteLog:
    """The log behind `/log/` at `base_url`, frozen at the checkpoint read on creation."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(base_url=base_url.rstrip("/"), transport=transport, timeout=30)
        self.checkpoint_note = _get(self._client, "/log/checkpoint", MAX_CHECKPOINT_BYTES)
        text = self.checkpoint_note.decode(errors="replace")
        try:
            self.checkpoint = Checkpoint.parse(text.split("\n\n", 1)[0] + "\n")
        except ValueError as exc:
            self._client.close()
            raise ServerError(
                f"{base_url.rstrip('/')}/log/checkpoint is not a C2SP checkpoint ({exc}): is "
                "this the address of an auditmesh server (or another tlog-tiles log)?"
            ) from None

    def close(self) -> None:
        self._client.close()

    def size(self) -> int:
        return self.checkpoint.size

    def checkpoint_notes(self) -> list[bytes]:
        return [self.checkpoint_note]

    def read_tile(self, level: int, index: int) -> bytes:
        count = self.checkpoint.size >> (tiles.TILE_HEIGHT * level)
        full, partial = divmod(count, tiles.TILE_WIDTH)
        if index < full:
            return _get(self._client, "/log/" + tiles.tile_path(level, index), MAX_TILE_BYTES)
        if index == full and partial:
            path, whole = tiles.tile_path(level, index, partial), tiles.tile_path(level, index)
            data = _get_partial(self._client, "/log/" + path, "/log/" + whole, MAX_TILE_BYTES)
            return data[: partial * 32]
        return b""

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        end = min(end, self.checkpoint.size)
        first = start // tiles.TILE_WIDTH
        for bundle in range(first, (end + tiles.TILE_WIDTH - 1) // tiles.TILE_WIDTH):
            base = bundle * tiles.TILE_WIDTH
            width = min(tiles.TILE_WIDTH, self.checkpoint.size - base)
            if width == tiles.TILE_WIDTH:
                path = "/log/" + tiles.entries_path(bundle)
                bundle_data = _get(self._client, path, MAX_BUNDLE_BYTES)
            else:
                partial, whole = tiles.entries_path(bundle, width), tiles.entries_path(bundle)
                bundle_data = _get_partial(
                    self._client, "/log/" + partial, "/log/" + whole, MAX_BUNDLE_BYTES
                )
            for offset, data in enumerate(tiles.decode_entry_bundle(bundle_data)[:width]):
                index = base + offset
                if start <= index < end:
                    yield index, data
