"""The demo's four small HTTP services, each talking to the mesh only through its sidecar.

They propagate `traceparent` and `x-request-id` to the calls they make, so a request from
outside becomes one trace across frontend → orders → payments. Their misbehaviour follows
`scenario.TROUBLE`, read from a shared clock so every service agrees on "now".
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from auditmesh.demo.scenario import TROUBLE

PROPAGATED = ("traceparent", "x-request-id")
EXPORT_BYTES = 256 * 1024


class RunClock:
    """Fraction of the run elapsed, shared by apps and drivers."""

    def __init__(self, duration_s: float, monotonic: Callable[[], float] = time.monotonic):
        self.duration_s = duration_s
        self._monotonic = monotonic
        self._start = monotonic()

    def restart(self) -> None:
        """Time zero is when traffic starts, not when the mesh began to boot."""
        self._start = self._monotonic()

    def fraction(self) -> float:
        return min(1.0, (self._monotonic() - self._start) / self.duration_s)


class App:
    """One service: routes, and an HTTP client per dependency (its sidecar's outbound port)."""

    def __init__(self, name: str, clock: RunClock, outbound: dict[str, int]) -> None:
        self.name = name
        self.clock = clock
        self._outbound = outbound
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self._rng = random.Random(name)

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def call(self, service: str, method: str, path: str, incoming: Any, **kw: Any) -> int:
        client: httpx.Client | None = getattr(self._local, service, None)
        if client is None:
            client = httpx.Client(base_url=f"http://127.0.0.1:{self._outbound[service]}")
            setattr(self._local, service, client)
            with self._lock:
                self._clients.append(client)
        headers = {h: incoming[h] for h in PROPAGATED if incoming.get(h)}
        try:
            return client.request(method, path, headers=headers, timeout=10, **kw).status_code
        except httpx.HTTPError:
            return 502

    def handle(self, method: str, path: str, headers: Any) -> tuple[int, bytes]:
        fraction = self.clock.fraction()
        if self.name == "frontend":
            if path.startswith("/checkout"):
                status = self.call("orders", "POST", "/orders", headers, content=b'{"items":2}')
            elif path.startswith("/orders/"):
                status = self.call("orders", "GET", path, headers)
            else:
                status = self.call("catalog", "GET", path, headers)
            return (200 if status < 400 else 502), b'{"page":"ok"}'
        if self.name == "catalog":
            if TROUBLE.catalog_errors.active(fraction) and self._rng.random() < 0.7:
                return 500, b'{"error":"catalog database unavailable"}'
            return 200, json.dumps({"product": path, "price": 1999}).encode()
        if self.name == "orders":
            if path.startswith("/orders/export"):
                return 200, b"x" * EXPORT_BYTES
            if method == "POST":
                status = self.call(
                    "payments", "POST", "/charges", headers, content=b'{"cents":1999}'
                )
                return (201 if status < 400 else 502), b'{"order":"created"}'
            if TROUBLE.new_caller.active(fraction):  # a stock check, new this release
                self.call("catalog", "GET", "/products/stock", headers)
            return 200, b'{"order":"shipped"}'
        if self.name == "payments":
            return (201 if method == "POST" else 200), b'{"charge":"ok"}'
        return 404, b"no such service"


class RunningApp:
    def __init__(self, app: App, server: ThreadingHTTPServer) -> None:
        self.app = app
        self.server = server
        self.port = int(server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.close()


def serve(app: App) -> RunningApp:
    """Start the app on a free loopback port in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _respond(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            status, body = app.handle(self.command, self.path, self.headers)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _respond

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"app-{app.name}", daemon=True).start()
    return RunningApp(app, server)
