"""The emitter with its spool on a disk that fills up while the server is away: once the
server is back, the spool drains (freeing the disk) and every event arrives, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from auditmesh.proxy.spool import SpoolConfig
from auditmesh.serverproc import free_port
from tests.proxy.test_emitter import closed, emitter, events, ids, ledger_ids, run, server, until
from tests.proxy.test_spool_disk_full import small_disk

__all__ = ["small_disk"]  # the fixture


@pytest.mark.integration
def test_a_spool_that_fills_the_disk_still_drains_when_the_server_is_back(
    small_disk: Path, tmp_path: Path
) -> None:
    stream = events(600)  # ~1 KiB each: more than the 256 KiB disk holds
    srv = server(tmp_path / "data", free_port())
    spool = SpoolConfig(max_bytes=64 * 1024 * 1024, fsync=False)  # the disk is the bound

    async def scenario() -> None:
        em = emitter(srv.url, small_disk / "sidecar", spool=spool)
        em.start()
        for event in stream:
            em.emit(event)
        await until(lambda: "No space left" in (em.stats().last_error or ""))
        stats = em.stats()
        assert stats.spool_depth_events > 0 and stats.buffered > 0 and stats.dropped == 0
        await asyncio.to_thread(srv.start)
        assert await em.drain(30)  # the spool first, then what waited in memory
        await closed(em)

    try:
        run(scenario)
    finally:
        assert srv.stop() == 0
    assert ledger_ids(tmp_path / "data") == ids(stream)
