"""A real `auditmesh server` with its mesh listener on, for tests of what sidecars send."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditmesh.identity.ca import init_ca
from auditmesh.serverproc import ServerProcess, free_port
from tests.server.test_mesh import Mesh


@contextmanager
def mesh_server(data: Path) -> Iterator[Mesh]:
    """A mesh CA in `data` and a server listening in plain HTTP and mTLS (no OTLP/gRPC)."""
    init_ca(data, "cluster.local", now=datetime.now(UTC) - timedelta(minutes=1))
    port = free_port()
    extra = ["--mesh-listen", f"127.0.0.1:{port}", "--otlp-grpc", "off"]
    with ServerProcess(data, extra=extra) as server:
        yield Mesh(server, f"https://127.0.0.1:{port}", data)
