"""Starts the server process: open the ledger, start the sequencer, serve HTTP until told to stop.

On SIGINT/SIGTERM uvicorn finishes open requests, then the collector commits what was
submitted and signs a last checkpoint before the store is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from auditmesh.collector import Collector
from auditmesh.datadir import open_ledger
from auditmesh.server.app import create_app


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutdown, which would skip the last checkpoint;
    here the signals only ask the server to exit and the caller finishes the job."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_until_signalled(server: uvicorn.Server) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    await server.serve()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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
    server = _Server(config)
    print(
        f"auditmesh server: http://{host}:{port}  data {data_dir}  "
        f"log {ledger.log.origin}  entries {ledger.log.size}\n"
        f"verifier key: {ledger.vkey}",
        flush=True,
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve_until_signalled(server))
    finally:
        collector.stop()
        ledger.close()
        print("auditmesh server: stopped; last checkpoint signed", flush=True)
