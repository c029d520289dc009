"""client.py RemoteLog: what a server that lies about its size or speed can do to a verifier."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from auditmesh import client
from auditmesh.client import RemoteLog, ServerError

CHECKPOINT = b"example.org/log\n300\n" + b"A" * 43 + b"=\n\n\xe2\x80\x94 x AAAA\n"


def serving(tile: httpx.Response) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/log/checkpoint":
            return httpx.Response(200, content=CHECKPOINT)
        return tile

    return httpx.MockTransport(answer)


def test_a_tile_larger_than_any_tile_is_refused_early() -> None:
    endless = (b"\0" * 65536 for _ in range(10**6))  # 64 GiB if read to the end
    remote = RemoteLog("http://log.test", transport=serving(httpx.Response(200, content=endless)))
    with pytest.raises(ServerError, match="more than 8192 bytes"):
        remote.read_tile(0, 0)


def test_an_answer_that_trickles_in_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "REQUEST_DEADLINE_S", 0.2)

    def slowly() -> Iterator[bytes]:
        for _ in range(100):
            time.sleep(0.05)
            yield b"\0"

    remote = RemoteLog("http://log.test", transport=serving(httpx.Response(200, content=slowly())))
    with pytest.raises(ServerError, match="no whole answer within 0.2 s"):
        remote.read_tile(0, 0)


@pytest.mark.parametrize(
    "answer", [b"<html>not a log</html>", b"example.org/log\nten\nroot\n\n", b"\xff\xfe"]
)
def test_an_address_that_serves_no_checkpoint_is_a_server_error(answer: bytes) -> None:
    """Was a ValueError the CLI did not expect: `log verify --url` ended in a traceback."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=answer))
    with pytest.raises(ServerError, match=r"http://web.test/log/checkpoint is not a C2SP check"):
        RemoteLog("http://web.test/", transport=transport)
