"""The demo's traffic: shoppers at the frontend, the batch-report job, and an intruder.

Each driver is a thread that runs until the run is over, paced with small random sleeps
(a seeded generator, so two runs look alike), counting what it did for the progress bar.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from auditmesh.demo.apps import RunClock
from auditmesh.demo.scenario import TROUBLE


class Drivers:
    def __init__(
        self,
        clock: RunClock,
        *,
        frontend_port: int,
        batch_ports: dict[str, int],
        intruder_target: int,
        bundle: Path,
        seed: int = 7,
    ) -> None:
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._frontend = frontend_port
        self._batch = batch_ports
        self._intruder_target = intruder_target
        self._bundle = bundle
        self._seed = seed
        self._threads: list[threading.Thread] = []
        self.stop = threading.Event()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _running(self) -> bool:
        return not self.stop.is_set() and self.clock.fraction() < 1.0

    def start(self, shoppers: int = 2) -> None:
        targets: list[Callable[[random.Random], None]] = [self._shopper] * shoppers
        targets += [self._batch_job, self._intruder]
        for number, target in enumerate(targets):
            rng = random.Random(self._seed * 100 + number)
            thread = threading.Thread(target=target, args=(rng,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _shopper(self, rng: random.Random) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self._frontend}", timeout=10) as client:
            while self._running():
                roll = rng.random()
                try:
                    if roll < 0.6:
                        client.get(f"/products/{rng.randint(1, 500)}")
                    elif roll < 0.8:
                        client.post("/checkout", content=b"{}")
                    else:
                        client.get(f"/orders/{rng.randint(1, 9999)}")
                    self._count("shopper requests")
                except httpx.HTTPError:
                    self._count("shopper errors")
                self.stop.wait(rng.uniform(0.02, 0.08))

    def _batch_job(self, rng: random.Random) -> None:
        clients = {
            name: httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            for name, port in self._batch.items()
        }
        tick = 0
        try:
            while self._running():
                fraction = self.clock.fraction()
                tick += 1
                try:
                    if tick % 4 == 0:
                        clients["catalog"].get("/products")
                        self._count("batch reads")
                    if TROUBLE.batch_denied.active(fraction) and tick % 3 == 0:
                        clients["payments"].get("/charges")  # not allowed: 403
                        self._count("batch denied")
                    if TROUBLE.batch_hammering.active(fraction):
                        clients["orders"].get(f"/orders/export?page={tick}")
                        self._count("batch exports")
                    elif tick % 8 == 0:
                        clients["orders"].get("/orders/export?page=1")
                        self._count("batch exports")
                except httpx.HTTPError:
                    self._count("batch errors")
                hammering = TROUBLE.batch_hammering.active(fraction)
                self.stop.wait(rng.uniform(0.01, 0.03) if hammering else rng.uniform(0.2, 0.3))
        finally:
            for client in clients.values():
                client.close()

    def _intruder(self, rng: random.Random) -> None:
        """Plaintext, then TLS without a client certificate, at a STRICT listener."""
        context = ssl.create_default_context(cafile=self._bundle)
        context.check_hostname = False
        while self._running():
            if TROUBLE.intruder.active(self.clock.fraction()):
                try:
                    with socket.create_connection(("127.0.0.1", self._intruder_target), 2) as s:
                        if rng.random() < 0.5:
                            s.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n")
                            s.recv(100)
                        else:
                            with context.wrap_socket(s) as tls:
                                tls.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n")
                                tls.recv(100)
                except (OSError, ssl.SSLError):
                    pass
                self._count("intruder attempts")
            self.stop.wait(rng.uniform(0.2, 0.4))
