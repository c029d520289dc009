"""The drop counts the spool keeps are forgotten only once the event reporting them is
durable (in the spool or in the ledger): a sidecar killed while that event is still in
memory reports the drops after its restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from auditmesh.proxy.spool import SPOOL_FULL, Spool
from tests.proxy.test_emitter import (
    SIDECAR,
    _notice,
    closed,
    emitter,
    ledger_events,
    run,
    server,
)

REPORTING_SIDECAR = """
import asyncio, sys
from pathlib import Path
import httpx
from auditmesh.proxy.emitter import Emitter, EmitterConfig

async def main() -> None:
    client = httpx.AsyncClient(base_url=sys.argv[1])
    emitter = Emitter(client, Path(sys.argv[2]), reporter=sys.argv[3],
                      config=EmitterConfig(flush_interval_s=0.01, request_timeout_s=120))
    emitter.start()
    while emitter.stats().notices < 1:
        await asyncio.sleep(0.01)
    print("reporting", flush=True)
    await asyncio.sleep(120)  # killed here: the notice is in memory or in flight

asyncio.run(main())
"""


@pytest.mark.integration
def test_a_sidecar_killed_while_reporting_drops_reports_them_after_restart(
    tmp_path: Path,
) -> None:
    sidecar = tmp_path / "sidecar"
    with Spool(sidecar / "spool") as spool:  # drops from an earlier run, not reported yet
        spool.note_dropped(SPOOL_FULL, 7)
    with socket.socket() as silent:  # a server that takes the request and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        child = subprocess.Popen(
            [sys.executable, "-c", REPORTING_SIDECAR, url, str(sidecar), SIDECAR],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == b"reporting\n"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
    srv = server(tmp_path / "data").start()
    try:

        async def restarted() -> None:
            em = emitter(srv.url, sidecar)
            em.start()
            assert await em.drain(15)
            await closed(em)

        run(restarted)
    finally:
        assert srv.stop() == 0
    notice = _notice(ledger_events(tmp_path / "data"))
    assert notice.labels[f"spool.dropped.{SPOOL_FULL}"] == "7"
