"""A realistic stream of service-to-service audit events, for the demo and the benchmarks.

A small shop mesh (frontend, catalog, orders, payments, batch-report) in namespace `shop`:
requests fan out along traces, with mostly-good traffic, a few errors, and a few policy
denials. Deterministic for a given seed and start time: randomness and clock are inputs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from auditmesh.events import (
    HTTP,
    TLS,
    AuditEvent,
    Authz,
    Error,
    Peer,
    Trace,
    new_event_id,
)

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "shop"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    ip: str
    port: int

    @property
    def identity(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.name}"


SERVICES = {
    s.name: s
    for s in (
        Service("frontend", "10.0.0.10", 8080),
        Service("catalog", "10.0.0.11", 8080),
        Service("orders", "10.0.0.12", 8080),
        Service("payments", "10.0.0.13", 8443),
        Service("batch-report", "10.0.0.14", 9000),
    )
}

# (caller, callee, method, path template, weight)
ROUTES = (
    ("frontend", "catalog", "GET", "/products/{id}", 40),
    ("frontend", "catalog", "GET", "/products", 15),
    ("frontend", "orders", "POST", "/orders", 10),
    ("frontend", "orders", "GET", "/orders/{id}", 12),
    ("orders", "payments", "POST", "/charges", 10),
    ("batch-report", "catalog", "GET", "/products", 3),
    ("batch-report", "orders", "GET", "/orders?since={id}", 2),
    ("batch-report", "payments", "GET", "/charges", 1),  # not allowed by policy
)


class TrafficGenerator:
    def __init__(self, *, seed: int = 7, start_ns: int, step_ns: int = 2_000_000) -> None:
        self._rng = random.Random(seed)
        self._now = start_ns
        self._step = step_ns
        self._routes = [r[:4] for r in ROUTES]
        self._weights = [r[4] for r in ROUTES]

    def _random_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def events(self, count: int) -> Iterator[AuditEvent]:
        for _ in range(count):
            yield self.one()

    def one(self) -> AuditEvent:
        rng = self._rng
        self._now += rng.randint(self._step // 2, self._step * 2)
        caller, callee, method, template = rng.choices(self._routes, self._weights)[0]
        src, dst = SERVICES[caller], SERVICES[callee]
        denied = caller == "batch-report" and callee == "payments"
        status = 403 if denied else _status(rng)
        duration_us = int(rng.lognormvariate(8.0 if callee == "payments" else 7.0, 0.6))
        path = template.replace("{id}", str(rng.randint(1, 99_999)))
        failure = status >= 500 or denied
        return AuditEvent(
            id=new_event_id(lambda: self._now, self._random_bytes),
            time_ns=self._now,
            duration_us=duration_us,
            reporter=dst.identity,
            kind="http",
            direction="inbound",
            source=Peer(
                identity=src.identity,
                service=src.name,
                namespace=NAMESPACE,
                ip=src.ip,
                port=rng.randint(32768, 60999),
            ),
            destination=Peer(
                identity=dst.identity,
                service=dst.name,
                namespace=NAMESPACE,
                ip=dst.ip,
                port=dst.port,
                host=f"{dst.name}.{NAMESPACE}.svc.cluster.local",
            ),
            tls=TLS(
                mutual=True,
                version="TLSv1.3",
                peer_cert_sha256=rng.randbytes(32).hex(),
                peer_not_after=self._now // 1_000_000_000 + 86_400,
            ),
            http=HTTP(
                method=method,
                path=path,
                status=status,
                request_bytes=rng.randint(0, 2_000) if method == "POST" else 0,
                response_bytes=0 if denied else rng.randint(200, 40_000),
                protocol="HTTP/1.1",
                user_agent=f"{caller}/1.4",
                request_id=rng.randbytes(8).hex(),
            ),
            authz=Authz(
                decision="deny" if denied else "allow",
                policy=f"{NAMESPACE}/{callee}-allow"
                if not denied
                else f"{NAMESPACE}/payments-only",
                rule=None if denied else 0,
            ),
            trace=Trace(trace_id=rng.randbytes(16).hex(), span_id=rng.randbytes(8).hex()),
            outcome="failure" if failure else "success",
            error=(
                Error(type="rbac_access_denied", message="RBAC: access denied")
                if denied
                else Error(type="upstream_error", message=f"HTTP {status}")
                if status >= 500
                else None
            ),
            labels={"app": callee, "version": "v1"},
            attested=False,
        )


def _status(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.93:
        return 200
    if roll < 0.97:
        return 404
    if roll < 0.99:
        return 500
    return 503
