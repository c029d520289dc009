"""A small real mesh for sidecar tests: server + CA, test apps, sidecar processes.

Everything listens on loopback with free ports; sidecars run as `auditmesh sidecar`
subprocesses with YAML configs written here, and enroll with real join tokens.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import yaml

from auditmesh.identity.ca import init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.tokens import JoinTokens
from auditmesh.serverproc import ServerProcess, free_port
from auditmesh.store.sqlite import SQLiteStore

TD = "cluster.local"


def spiffe(sa: str) -> SpiffeId:
    return SpiffeId.kubernetes(TD, "shop", sa)


class AppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes: no 40 ms Nagle stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        seen = {
            "x-seen-xfcc": self.headers.get("x-forwarded-client-cert", "-"),
            "x-seen-traceparent": self.headers.get("traceparent", "-"),
            "x-seen-request-id": self.headers.get("x-request-id", "-"),
        }
        if self.path.startswith("/status/"):
            self._reply(int(self.path.rsplit("/", 1)[1]), b"status")
        elif self.path == "/slow":
            time.sleep(3)
            self._reply(200, b"slow")
        elif self.path == "/ws":
            self.send_response(101)
            self.send_header("upgrade", "websocket")
            self.send_header("connection", "upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.rfile.read1(4096):
                self.wfile.write(b"echo:" + data)
                self.wfile.flush()
            self.close_connection = True
        else:
            name = getattr(self.server, "server_name", "app")
            self._reply(200, b"hello from " + name.encode(), seen)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self._reply(200, self.rfile.read(length))


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@dataclass
class Mesh:
    root: Path
    server: ServerProcess
    mesh_url: str
    apps: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _servers: list[socketserver.BaseServer] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def start_app(self, name: str) -> int:
        server = ThreadingHTTPServer(("127.0.0.1", 0), AppHandler)
        server.daemon_threads = True
        server.server_name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        self.apps[name] = server.server_address[1]
        return self.apps[name]

    def start_echo(self) -> int:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return int(server.server_address[1])

    def sidecar(self, name: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
        directory = self.root / f"sidecar-{name}"
        directory.mkdir(exist_ok=True)
        token = JoinTokens(self.data).mint(spiffe(name), now=datetime.now(UTC))
        full = {
            "workload": {"name": name, "namespace": "shop"},
            "server": {
                "url": self.mesh_url,
                "bundle": str(self.data / "ca" / "ca.pem"),
                "join_token": token,
            },
            "data_dir": str(directory / "data"),
            "audit": {"flush_ms": 50},
            **config,
        }
        path = directory / "sidecar.yaml"
        path.write_text(yaml.safe_dump(full))
        with open(directory / "sidecar.log", "wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "auditmesh", "sidecar", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        for key in ("inbound", "outbound"):
            for entry in config.get(key, []) if key == "outbound" else [config.get(key)]:
                if entry:
                    wait_port(int(entry["listen"].rsplit(":", 1)[1]), proc, directory)
        return proc

    def restart_server(self) -> None:
        """Start the stopped server again on the same ports and data."""
        old = self.server
        self.server = ServerProcess(old.data_dir, port=old.port, extra=old.extra).start()

    def events(self) -> list[dict[str, Any]]:
        store = SQLiteStore(self.data, create=False)
        try:
            return [msgspec.json.decode(d) for _, d in store.entries(0, store.size())]
        finally:
            store.close()

    def wait_events(self, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if predicate(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self.server.stop()


def wait_port(port: int, proc: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((directory / "sidecar.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sidecar never listened on {port}")


def start_mesh(root: Path, server_args: Sequence[str] = ()) -> Mesh:
    data = root / "server"
    init_ca(data, TD, now=datetime.now(UTC) - timedelta(minutes=1))
    mesh_port = free_port()
    extra = ["--mesh-listen", f"127.0.0.1:{mesh_port}", "--otlp-grpc", "off", *server_args]
    server = ServerProcess(data, extra=extra).start()
    return Mesh(root, server, f"https://127.0.0.1:{mesh_port}")


def address(port: int) -> str:
    return f"127.0.0.1:{port}"


def mesh_context(root: Path, server_args: Sequence[str] = ()) -> Iterator[Mesh]:
    mesh = start_mesh(root, server_args)
    try:
        yield mesh
    finally:
        mesh.close()
