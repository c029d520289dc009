"""Policy engine throughput: 200 AuthorizationPolicies of 5 rules, decisions per second.

Run: ``.venv/bin/python bench/policy_bench.py [--requests N] [--seconds S]``.

The set is shaped like a mesh: 36 namespaces × 5 workloads, each with its own ALLOW policy
(180), 18 namespace-wide DENY policies and 2 mesh-wide ones in the root namespace (one DENY, one
AUDIT) — 200 policies, 1000 rules, loaded from YAML like ``policy eval`` does. Requests mix
allowed, denied-by-DENY, denied-by-default and TCP calls over all workloads. Two figures: the
full ``PolicyEngine.evaluate`` (workload lookup included) and the sidecar path, where the
inbound listener holds its ``WorkloadAuthorizer``. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import collections
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import load_policies
from auditmesh.policy.request import Request

NAMESPACES = [f"ns{i:02d}" for i in range(36)]
APPS = [f"app{i}" for i in range(5)]


def _allow(ns: str, app: str, rng: random.Random) -> str:
    peer = rng.choice(NAMESPACES)
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-{app}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/{peer}/sa/client0", "cluster.local/ns/{peer}/sa/client1"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/v1/*"]
  - from:
    - source:
        namespaces: ["{rng.choice(NAMESPACES)}"]
    to:
    - operation:
        methods: ["GET", "POST"]
        paths: ["/orders", "/orders/{{*}}"]
  - from:
    - source:
        principals: ["cluster.local/ns/{peer}/sa/batch"]
    to:
    - operation:
        ports: ["8080"]
    when:
    - key: request.headers[x-tenant]
      values: ["acme", "globex"]
  - from:
    - source:
        ipBlocks: ["10.{rng.randrange(256)}.0.0/16"]
    to:
    - operation:
        paths: ["*/health"]
  - from:
    - source:
        principals: ["*"]
    to:
    - operation:
        notMethods: ["DELETE"]
        paths: ["/public*"]
"""


def _deny(ns: str, name: str, action: str = "DENY") -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  action: {action}
  rules:
  - from:
    - source:
        notNamespaces: ["{ns}", "istio-system"]
    to:
    - operation:
        paths: ["/admin*"]
  - to:
    - operation:
        methods: ["TRACE", "CONNECT"]
  - from:
    - source:
        ipBlocks: ["192.0.2.0/24", "198.51.100.7"]
  - to:
    - operation:
        paths: ["/debug/{{**}}"]
    when:
    - key: source.namespace
      notValues: ["ops"]
  - when:
    - key: request.headers[x-forwarded-client-cert]
      values: ["*"]
"""


def write_policies(directory: Path, rng: random.Random) -> None:
    docs = [_allow(ns, app, rng) for ns in NAMESPACES for app in APPS]
    docs += [_deny(ns, "deny-admin") for ns in NAMESPACES[:18]]
    docs += [_deny("istio-system", "mesh-deny"), _deny("istio-system", "mesh-audit", "AUDIT")]
    assert len(docs) == 200
    (directory / "policies.yaml").write_text("---\n".join(docs))


def make_requests(n: int, rng: random.Random) -> list[Request]:
    paths = [
        "/api/v1/items",
        "/orders/17",
        "/orders",
        "/admin/users",
        "/x/health",
        "/public/a",
        "/debug/pprof/heap",
        "/nothing",
    ]
    requests = []
    for _ in range(n):
        ns = rng.choice(NAMESPACES)
        http = rng.random() < 0.9
        requests.append(
            Request.of(
                destination_namespace=ns,
                destination_labels={"app": rng.choice(APPS), "version": "v1"},
                source_principal=f"spiffe://cluster.local/ns/{rng.choice(NAMESPACES)}/sa/"
                + rng.choice(["client0", "client1", "batch", "web"]),
                source_ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                destination_port=rng.choice([8080, 9090]),
                http=http,
                method=rng.choice(["GET", "POST", "DELETE"]) if http else None,
                path=rng.choice(paths) if http else None,
                host=f"app.{ns}.svc.cluster.local" if http else None,
                headers={"x-tenant": rng.choice(["acme", "initech"])} if http else None,
            )
        )
    return requests


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rate(evaluate: Callable[[Request], object], requests: list[Request], seconds: float) -> float:
    """Decisions per second of this process's CPU time (robust to other load on the box)."""
    done = 0
    start = time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for request in requests:
            evaluate(request)
        done += len(requests)
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rng = random.Random(4)
    with tempfile.TemporaryDirectory() as tmp:
        write_policies(Path(tmp), rng)
        start = time.perf_counter()
        policies = load_policies(tmp)
        loaded = time.perf_counter() - start
    engine = PolicyEngine(policies)
    requests = make_requests(args.requests, rng)
    start = time.perf_counter()
    outcomes = collections.Counter(
        (d.decision, "policy" if d.policy else "default") for d in map(engine.evaluate, requests)
    )
    first = time.perf_counter() - start
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"machine: {cpu_model()}, {python}, one process (one core)")
    print(
        f"policies: {len(policies.authorization)}, rules: "
        f"{sum(len(p.rules) for p in policies.authorization)}, loaded in {loaded * 1000:.0f} ms; "
        f"first pass (compiles {len(engine._workloads)} workloads) {first * 1000:.0f} ms"
    )
    print("outcomes:", dict(outcomes))
    full = rate(engine.evaluate, requests, args.seconds)
    print(f"PolicyEngine.evaluate:       {full:>10,.0f} decisions/s")
    by_workload: dict[tuple[str, tuple[tuple[str, str], ...]], list[Request]] = {}
    for request in requests:
        key = (request.destination_namespace, request.destination_labels)
        by_workload.setdefault(key, []).append(request)
    key, subset = max(by_workload.items(), key=lambda kv: len(kv[1]))
    authorizer = engine.for_workload(*key)
    sidecar = rate(authorizer.evaluate, subset, args.seconds)
    print(
        f"WorkloadAuthorizer.evaluate: {sidecar:>10,.0f} decisions/s "
        f"({len(authorizer.policies)} policies apply to {key[0]}/{dict(key[1])})"
    )


if __name__ == "__main__":
    main()
