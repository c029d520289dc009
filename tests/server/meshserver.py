"""A real `auditmesh server` with its mesh listener on, for tests of what sidecars send."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditmesh.identity.ca import init_ca
from auditmesh.serverproc import ServerProcess, free_port
from tests.server.test_mesh import Mesh


@contextmanager
def mesh_server(data: Path, extra: Sequence[str] = ()) -> Iterator[Mesh]:
    """A mesh CA in `data` and a server listening in plain HTTP and mTLS (no OTLP/gRPC),
    started with `extra` arguments besides."""
    init_ca(data, "cluster.local", now=datetime.now(UTC) - timedelta(minutes=1))
    port = free_port()
    arguments = ["--mesh-listen", f"127.0.0.1:{port}", "--otlp-grpc", "off", *extra]
    with ServerProcess(data, extra=arguments) as server:
        yield Mesh(server, f"https://127.0.0.1:{port}", data)
