"""A small real mesh for sidecar tests: `meshproc.LocalMesh` plus test apps and ledger reads.

Everything listens on loopback with free ports; sidecars run as `auditmesh sidecar`
subprocesses with YAML configs written here, and enroll with real join tokens.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec

from auditmesh.identity.spiffe import SpiffeId
from auditmesh.meshproc import LocalMesh, address
from auditmesh.serverproc import ServerProcess
from auditmesh.store.sqlite import SQLiteStore

TD = "cluster.local"

# How long a test waits for the mesh to do what it will do soon: events landing in the
# ledger, a sidecar taking up a changed policy. The waits end as soon as it is done, so the
# bound only matters when it never is; it is generous because sidecars and the server are
# slow on a loaded 2-vCPU CI runner (10 s was the next thing to fail there).
EVENT_WAIT_S = 60.0


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
            "x-seen-upgrade": self.headers.get("upgrade", "-"),
            "x-seen-path": self.path,
        }
        if self.path.startswith("/status/"):
            self._reply(int(self.path.rsplit("/", 1)[1]), b"status")
        elif self.path == "/slow":
            time.sleep(3)
            self._reply(200, b"slow")
        elif self.path == "/short":  # announces 100 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/trailers":  # chunked, with a trailer section
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.send_header("trailer", "x-t")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\nx-t: done\r\n\r\n")
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
        if "chunked" in self.headers.get("transfer-encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()  # the empty trailer section
        else:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self._reply(200, body)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@dataclass
class Mesh:
    """`meshproc.LocalMesh` plus test apps and ledger reads."""

    local: LocalMesh
    apps: dict[str, int] = field(default_factory=dict)
    _servers: list[socketserver.BaseServer] = field(default_factory=list)

    @property
    def server(self) -> ServerProcess:
        return self.local.server

    @property
    def data(self) -> Path:
        return self.local.data

    @property
    def mesh_url(self) -> str:
        return self.local.mesh_url

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
        return self.local.start_sidecar(name, "shop", {"audit": {"flush_ms": 50}, **config})

    def echo_sidecar(self, name: str, port: int) -> None:
        """`name`: a TCP echo app behind an inbound sidecar in TCP mode listening on `port`."""
        inbound = {"listen": address(port), "app": address(self.start_echo()), "protocol": "tcp"}
        self.sidecar(name, {"inbound": inbound})

    def identity_files(self, name: str) -> tuple[Path, Path]:
        identity = self.data / "mesh" / name / "data" / "identity"
        return identity / "svid.pem", identity / "svid-key.pem"

    def restart_server(self) -> None:
        """Start the stopped server again on the same ports and data."""
        old = self.local.server
        self.local.server = ServerProcess(old.data_dir, port=old.port, extra=old.extra).start()

    def events(self) -> list[dict[str, Any]]:
        store = SQLiteStore(self.data, create=False)
        try:
            return [msgspec.json.decode(d) for _, d in store.entries(0, store.size())]
        finally:
            store.close()

    def wait_events(
        self, predicate: Any, timeout: float = EVENT_WAIT_S, *, count: int = 1
    ) -> list[dict[str, Any]]:
        """The events matching `predicate`, once at least `count` have landed (or what
        there is at `timeout`), reading the ledger every 0.1 s meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if predicate(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def close(self) -> None:
        self.local.stop()
        for server in self._servers:
            server.shutdown()
            server.server_close()


def events_of(mesh: Mesh, prefix: str, count: int) -> list[dict[str, Any]]:
    """The HTTP events whose request id starts with `prefix`, once `count` have landed."""

    def matching() -> list[dict[str, Any]]:
        return [
            e for e in mesh.events() if e.get("http", {}).get("request_id", "").startswith(prefix)
        ]

    deadline = time.monotonic() + EVENT_WAIT_S
    found = matching()
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        found = matching()
    return found


def open_websocket(port: int, request_id: str) -> tuple[socket.socket, bytes]:
    """A WebSocket upgrade to payments through the outbound listener on `port`: the open
    socket and what came back, the response head and any bytes after it."""
    ws = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ws, upgrade(ws, request_id)


def upgrade(conn: socket.socket, request_id: str) -> bytes:
    """Ask for a WebSocket upgrade to the app's /ws (it echoes) on `conn`: what came back,
    the response head and any bytes after it."""
    conn.sendall(
        b"GET /ws HTTP/1.1\r\nHost: payments\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nx-request-id: " + request_id.encode() + b"\r\n\r\n"
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += conn.recv(1000)
    return received


def mesh_context(root: Path, server_args: Sequence[str] = ()) -> Iterator[Mesh]:
    mesh = Mesh(LocalMesh.start(root / "server", server_args=tuple(server_args)))
    try:
        yield mesh
    finally:
        mesh.close()
