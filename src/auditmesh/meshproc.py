"""A mesh on loopback: the audit server with its CA, and `auditmesh sidecar` processes.

Used by `auditmesh demo`, the tests and the benchmarks. Each sidecar gets a YAML config
written here and enrolls with a fresh one-time join token, exactly as an operator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from auditmesh.identity.ca import init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.tokens import JoinTokens
from auditmesh.serverproc import ServerProcess, free_port


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@dataclass
class LocalMesh:
    """The server (with `--mesh-listen`) and the sidecars started on it."""

    data: Path  # the server's data directory; sidecars live under data/mesh/
    trust_domain: str
    server: ServerProcess
    mesh_url: str
    sidecars: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def start(
        cls, data: Path, *, trust_domain: str = "cluster.local", server_args: tuple[str, ...] = ()
    ) -> LocalMesh:
        data = data.resolve()  # sidecar configs name absolute paths
        init_ca(data, trust_domain, now=datetime.now(UTC) - timedelta(minutes=1))
        mesh_port = free_port()
        extra = ["--mesh-listen", f"127.0.0.1:{mesh_port}", "--otlp-grpc", "off", *server_args]
        server = ServerProcess(data, extra=extra).start()
        return cls(data, trust_domain, server, f"https://127.0.0.1:{mesh_port}")

    @property
    def bundle_path(self) -> Path:
        return self.data / "ca" / "ca.pem"

    def identity(self, namespace: str, service_account: str) -> SpiffeId:
        return SpiffeId.kubernetes(self.trust_domain, namespace, service_account)

    def start_sidecar(
        self, name: str, namespace: str, config: dict[str, Any]
    ) -> subprocess.Popen[bytes]:
        """Write the config, mint a join token, start the process, wait for its listeners."""
        directory = self.data / "mesh" / name
        directory.mkdir(parents=True, exist_ok=True)
        token = JoinTokens(self.data).mint(self.identity(namespace, name), now=datetime.now(UTC))
        full = {
            "workload": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "server": {"url": self.mesh_url, "bundle": str(self.bundle_path), "join_token": token},
            "data_dir": str(directory / "data"),
            **config,
        }
        path = directory / "sidecar.yaml"
        path.write_text(yaml.safe_dump(full, sort_keys=False))
        log = directory / "sidecar.log"
        with open(log, "wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "auditmesh", "sidecar", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sidecars[name] = proc
        listeners = [config["inbound"]] if config.get("inbound") else []
        for entry in [*listeners, *config.get("outbound", [])]:
            wait_port(int(entry["listen"].rsplit(":", 1)[1]), proc, log)
        return proc

    def stop(self) -> None:
        for proc in self.sidecars.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.sidecars.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.sidecars.clear()
        self.server.stop()


def address(port: int) -> str:
    return f"127.0.0.1:{port}"
