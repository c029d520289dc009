"""Starts the server process: open the ledger, start the sequencer, serve HTTP until told to stop.

On SIGINT/SIGTERM uvicorn finishes open requests, then the collector commits what was
submitted and signs a last checkpoint before the store is closed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from auditmesh.collector import Collector
from auditmesh.datadir import open_ledger
from auditmesh.server.app import create_app


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, e.g. 127.0.0.1:7600, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(
    data_dir: Path,
    host: str,
    port: int,
    *,
    origin: str | None = None,
    checkpoint_interval_s: float = 1.0,
) -> None:
    ledger = open_ledger(data_dir, origin=origin)
    collector = Collector(ledger.log, checkpoint_interval_ns=int(checkpoint_interval_s * 1e9))
    collector.start()
    app = create_app(ledger, collector)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    print(
        f"auditmesh server: http://{host}:{port}  data {data_dir}  "
        f"log {ledger.log.origin}  entries {ledger.log.size}\n"
        f"verifier key: {ledger.vkey}",
        flush=True,
    )
    try:
        server.run()
    finally:
        collector.stop()
        ledger.close()
        print("auditmesh server: stopped; last checkpoint signed", flush=True)
