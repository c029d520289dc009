"""A sidecar's emitter killed with SIGKILL while its report is in memory or in flight, then
restarted against a real server: what the kill -9 tests of the emitter share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from auditmesh.events import AuditEvent
from tests.proxy.test_emitter import SIDECAR, closed, emitter, ledger_events, run, server

# argv: server URL, sidecar dir, reporter, and when to say "ready": "started", or "notice"
# once a notice event (drops, damage) is made; then it waits to be killed.
_CHILD = """
import asyncio, sys
from pathlib import Path
import httpx
from auditmesh.proxy.emitter import Emitter, EmitterConfig

async def main() -> None:
    client = httpx.AsyncClient(base_url=sys.argv[1])
    emitter = Emitter(client, Path(sys.argv[2]), reporter=sys.argv[3],
                      config=EmitterConfig(flush_interval_s=0.01, request_timeout_s=120))
    emitter.start()
    while sys.argv[4] == "notice" and emitter.stats().notices < 1:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await asyncio.sleep(120)  # killed here: the report is in memory or in flight

asyncio.run(main())
"""


def kill_while_reporting(sidecar: Path, ready_when: str) -> None:
    """Start the emitter on `sidecar` against a server that takes requests and never
    answers; SIGKILL it once it is ready (`ready_when`: "started" or "notice")."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(sidecar), SIDECAR, ready_when],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == b"ready\n"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()


def deliver_after_restart(sidecar: Path, data: Path) -> list[AuditEvent]:
    """Restart the emitter on `sidecar` against a real server on `data`, deliver all it
    holds, stop; the ledger's events."""
    srv = server(data).start()
    try:

        async def restarted() -> None:
            em = emitter(srv.url, sidecar)
            em.start()
            assert await em.drain(15)
            await closed(em)

        run(restarted)
    finally:
        assert srv.stop() == 0
    return ledger_events(data)
