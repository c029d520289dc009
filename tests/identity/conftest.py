"""Fixtures for identity tests: a real mesh CA on disk, created by the real code."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.cli.main import main
from auditmesh.events import AuditEvent, Peer, new_event_id
from auditmesh.identity.ca import MeshCA, init_ca
from auditmesh.identity.svid import make_csr

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TD = "example.org"
CLI_ID = "spiffe://example.org/ns/payments/sa/api"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory with a mesh CA, made by `auditmesh ca init` itself."""
    path = tmp_path / "data"
    assert main(["ca", "init", "--trust-domain", TD, "--data", str(path)]) == 0
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def mesh_ca(data_dir: Path) -> MeshCA:
    return init_ca(data_dir, TD, now=NOW)


@pytest.fixture
def workload_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def csr_pem(workload_key: ec.EllipticCurvePrivateKey) -> bytes:
    return make_csr(workload_key)


def pending_event(n: int = 0, **labels: str) -> AuditEvent:
    """A CA action's event, as `ca token`/`ca issue` queue them (pending.py)."""
    return AuditEvent(
        id=new_event_id(),
        time_ns=1_700_000_000_000_000_000 + n,
        reporter="test",
        kind="identity",
        outcome="success",
        source=Peer(identity=CLI_ID),
        destination=Peer(service="auditmesh-ca"),
        labels=labels,
    )
