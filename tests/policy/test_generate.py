"""`auditmesh policy generate` and auditmesh.policy.generate.

The property that matters: the generated policies, loaded back and replayed over the calls they
came from, deny none that was allowed — checked on simulated shop traffic, on hand-built edge
cases (an exact golden output) and on random traffic with hypothesis.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.cli.main import main
from auditmesh.datadir import Ledger
from auditmesh.events import AuditEvent
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.generate import (
    Window,
    collapse_paths,
    covers,
    generate_policies,
    is_id_segment,
    minimal,
    path_pattern,
)
from auditmesh.policy.model import load_policies
from auditmesh.policy.replay import Call, inbound_call, replay
from tests.conftest import fill, generate
from tests.policy.test_replay import SHOP, SINCE, make_event

UUID = "0b8f0a4e-4c1e-4a43-9d1f-3f2c9e0a7b11"
WINDOW = Window("test window", "test ledger")


def calls_of(
    events: list[AuditEvent], workloads: dict[str, dict[str, str]] | None = None
) -> list[Call]:
    return [c for i, e in enumerate(events) if (c := inbound_call(i, e, workloads or {}))]


def load_text(text: str) -> PolicyEngine:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.yaml"
        path.write_text(text, encoding="utf-8")
        return PolicyEngine(load_policies(path))


def body(text: str) -> str:
    """The YAML after the header comment (the header names the window)."""
    return text[text.index("---\n") :]


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "is_id"),
    [
        ("123", True),
        ("0", True),
        (UUID, True),
        (UUID.upper(), True),
        ("5f3a9c0e12", True),  # hex with a digit, 8+ long
        ("507f1f77bcf86cd799439011", True),  # a Mongo ObjectId
        ("deadbeef", False),  # hex letters only: a word
        ("cafe123", False),  # 7 hex digits: too short to be sure
        ("products", False),
        ("v1", False),
        ("", False),
        ("12a", False),
        ("0b8f0a4e-4c1e", False),
    ],
)
def test_id_segments(segment: str, is_id: bool) -> None:
    assert is_id_segment(segment) is is_id


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("/products", "/products"),
        ("/products/", "/products/"),
        ("/products/123", "/products/*"),
        (f"/users/{UUID}/orders", "/users/*"),
        ("/api/v1/items/5f3a9c0e12/parts/7", "/api/v1/items/*"),
        ("/123", "/123"),  # the first segment is never cut: /* would allow every path
        ("/api/v2/status", "/api/v2/status"),
        # Istio has no escape for * { }: the text before them becomes a prefix.
        ("/files/a*b", "/files/a*"),
        ("/t/{*}/x", "/t/*"),
        ("*", "*"),
        ("{x}", "*"),
    ],
)
def test_path_pattern(path: str, pattern: str) -> None:
    assert path_pattern(path) == pattern


def test_covers_and_minimal() -> None:
    assert covers("/a/*", "/a/b") and covers("/a/*", "/a/b/*") and covers("/a/*", "/a/")
    assert not covers("/a/*", "/a") and not covers("/a", "/a/b") and not covers("/a/b/*", "/a/*")
    assert covers("*", "/x") and covers("/a*", "/ab/c")
    assert minimal(["/a/b", "/a/*", "/a", "/c/d/*", "/c/*", "/a/*"]) == ("/a", "/a/*", "/c/*")


def test_collapse_crowded_directory() -> None:
    static = [f"/static/file{i}.css" for i in range(9)]
    mapping = collapse_paths([*static, "/static", "/index.html", "/products/7"], max_paths=8)
    assert {mapping[p] for p in static} == {"/static/*"}
    assert mapping["/static"] == "/static"
    assert mapping["/index.html"] == "/index.html"
    assert mapping["/products/7"] == "/products/*"
    # Exactly max_paths distinct paths stay exact.
    assert collapse_paths(static[:8], max_paths=8) == {p: p for p in static[:8]}


def test_collapse_cascades_and_spares_the_root() -> None:
    # Three crowded subdirectories make /api/ crowded in turn once they collapse.
    paths = [f"/api/{d}/{name}" for d in ("a", "b", "c") for name in ("x", "y", "z")]
    paths += [f"/top{i}" for i in range(20)]
    mapping = collapse_paths(paths, max_paths=2)
    assert {mapping[p] for p in paths[:9]} == {"/api/*"}
    assert all(mapping[p] == p for p in paths[9:])  # never "/*"
    # Collapsed ids count as one entry of their directory.
    ids = [f"/orders/{n}" for n in range(50)] + ["/orders/recent"]
    assert set(collapse_paths(ids, max_paths=2).values()) == {"/orders/*", "/orders/recent"}


# -- generated policies ------------------------------------------------------------------------

GOLDEN = """\
---
# shop/catalog: 7 allowed calls from 5 callers
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: catalog-allow-observed
  namespace: shop
spec:
  selector:
    matchLabels:
      app: catalog
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks:
        - 10.0.0.8
        - 10.0.0.9
    to:
    - operation:
        methods:
        - GET
        paths:
        - /healthz
  - from:
    - source:
        principals:
        - cluster.local/ns/shop/sa/batch-report
  - from:
    - source:
        principals:
        - cluster.local/ns/shop/sa/frontend
    to:
    - operation:
        methods:
        - GET
        paths:
        - /products
        - /products/*
    - operation:
        methods:
        - HEAD
        paths:
        - /products/*
  - from:
    - source:
        principals:
        - cluster.local/ns/shop/sa/orders
    to:
    - operation:
        methods:
        - GET
        paths:
        - /products
---
# shop/orders: 3 allowed calls from 2 callers
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: orders-allow-observed
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/shop/sa/catalog
    to:
    - operation:
        ports:
        - '9090'
        methods:
        - GET
        paths:
        - /metrics
  - from:
    - source:
        principals:
        - cluster.local/ns/shop/sa/frontend
    to:
    - operation:
        ports:
        - '8080'
        methods:
        - POST
        paths:
        - /orders
    - operation:
        ports:
        - '9090'
        methods:
        - GET
        paths:
        - /metrics
---
# shop/payments: no allowed call, 1 denied: allow nothing
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payments-allow-observed
  namespace: shop
spec:
  selector:
    matchLabels:
      app: payments
  action: ALLOW
"""


def edge_events() -> list[AuditEvent]:
    rng = random.Random(3)

    def event(**fields: object) -> AuditEvent:
        return make_event(rng=rng, **fields)  # type: ignore[arg-type]

    return [
        event(path="/products/1"),
        event(method="HEAD", path="/products/2"),
        event(path="/products?page=2"),  # Istio matches the path without its query
        event(source=SHOP + "orders", path="/products"),
        event(source=None, source_ip="10.0.0.9", path="/healthz"),
        event(source=None, source_ip="10.0.0.8", path="/healthz"),
        # TCP: a rule of its own (Istio drops ALLOW rules with HTTP fields for TCP); a
        # single-port workload gets no ports, so the rule has no `to`.
        event(source=SHOP + "batch-report", kind="tcp"),
        event(service="payments", source=SHOP + "batch-report", path="/charges", decision="deny"),
        event(service="orders", method="POST", path="/orders", port=8080),
        event(service="orders", path="/metrics", port=9090),
        event(service="orders", path="/metrics", port=9090, source=SHOP + "catalog"),
    ]


def test_golden_output_for_edge_cases() -> None:
    events = edge_events()
    text = generate_policies(calls_of(events), WINDOW)
    assert text.startswith(
        "# Least-privilege ALLOW policies generated by `auditmesh policy generate` from the\n"
        "# inbound calls the audit ledger recorded as allowed.\n"
        "# Window: test window\n"
        "# Source: test ledger\n"
        "# Observed: 10 allowed calls to 3 workloads\n"
    )
    assert body(text) == GOLDEN
    report = replay(load_text(text), enumerate(events))
    assert report.newly_denied == () and report.newly_allowed == ()


def test_output_is_stable_and_loads() -> None:
    events = generate(1200)
    calls = calls_of(events)
    text = generate_policies(calls, WINDOW)
    shuffled = calls[:]
    random.Random(5).shuffle(shuffled)
    assert generate_policies(shuffled, WINDOW) == text
    engine = load_text(text)
    assert [(p.key, p.action, p.selector) for p in engine.policies] == [
        ("shop/catalog-allow-observed", "ALLOW", (("app", "catalog"),)),
        ("shop/orders-allow-observed", "ALLOW", (("app", "orders"),)),
        ("shop/payments-allow-observed", "ALLOW", (("app", "payments"),)),
    ]
    report = replay(engine, enumerate(events))
    assert report.newly_denied == ()
    # batch-report → payments was denied and stays so: payments allows orders only.
    assert report.newly_allowed == ()
    payments = engine.policies[2].rules
    assert len(payments) == 1
    assert payments[0].sources[0].principals == ("cluster.local/ns/shop/sa/orders",)


def test_workloads_labels_become_selectors_and_names_stay_unique() -> None:
    events = [
        make_event(service="Orders"),
        make_event(service="orders", time_ns=1),
        make_event(service="api", namespace="istio-system", time_ns=2),
    ]
    workloads = {"shop/Orders": {"tier": "backend", "team": "x"}}
    text = generate_policies(calls_of(events, workloads), WINDOW, workloads=workloads)
    engine = load_text(text)
    assert [(p.key, p.selector) for p in engine.policies] == [
        ("istio-system/api-allow-observed", (("app", "api"),)),
        ("shop/orders-allow-observed", (("team", "x"), ("tier", "backend"))),
        ("shop/orders-allow-observed-2", (("app", "orders"),)),
    ]
    assert "# note: istio-system is the root namespace; this policy applies mesh-wide\n" in text
    report = replay(engine, enumerate(events), workloads)
    assert report.newly_denied == ()


def test_namespace_filter_and_unnamed_workloads() -> None:
    events = [
        make_event(),
        make_event(namespace="other", time_ns=1),
        make_event(service=None, time_ns=2),
    ]
    text = generate_policies(calls_of(events), WINDOW, namespace="shop")
    assert "# Observed: 1 allowed call to 1 workload in namespace shop\n" in text
    assert "# Left out: 1 allowed calls to workloads the events do not name" in text
    assert [p.key for p in load_text(text).policies] == ["shop/catalog-allow-observed"]


# -- the property ------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["products", "orders", "v1", "", "123", "0", "deadbeef", "cafe1234", UUID]
    + ["a*b", "*", "{*}", "{**}", "x{y", "%41", "ü", "a b", "..", "?q=1", "#f"]
)
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=12),
    st.none(),
)
EVENTS = st.builds(
    make_event,
    source=st.sampled_from(
        [SHOP + "frontend", SHOP + "orders", "spiffe://other.td/ns/x/sa/y*", "spiffe://t/*", None]
    ),
    source_ip=st.sampled_from(
        ["10.0.0.1", "10.0.0.2", "fe80::1%eth0", "::ffff:10.0.0.1", None, "x"]
    ),
    service=st.sampled_from(["catalog", "Orders!", "orders", "a/b", None]),
    namespace=st.sampled_from(["shop", "istio-system", "other"]),
    port=st.sampled_from([None, 8080, 9090]),
    method=st.sampled_from([None, "GET", "POST", "GE*", "*"]),
    path=PATHS,
    kind=st.sampled_from(["http", "http", "tcp"]),
    decision=st.sampled_from(["allow", "allow", "deny", None, "audit"]),
    time_ns=st.integers(0, 2**40),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=25), st.integers(1, 4))
def test_generated_policies_allow_every_observed_call(
    events: list[AuditEvent], max_paths: int
) -> None:
    calls = calls_of(events)
    text = generate_policies(calls, WINDOW, max_paths=max_paths)
    engine = load_text(text)
    for call in calls:
        if call.recorded == "allow":
            decision = engine.evaluate(call.request)
            assert decision.allowed, (call, decision, text)
    assert replay(engine, enumerate(events)).newly_denied == ()
    # Deterministic whatever the order the calls come in.
    assert generate_policies(calls[::-1], WINDOW, max_paths=max_paths) == text


# -- the command -------------------------------------------------------------------------------


def test_cli_generate_stdout_and_file(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(ledger, edge_events())
    argv = ["policy", "generate", "--since", SINCE, "--data", str(ledger.data_dir)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("# Least-privilege ALLOW policies generated by")
    assert f"# Window: {SINCE} .. " in out and f"(--since {SINCE})\n" in out
    assert f"# Source: ledger test.auditmesh/log in {ledger.data_dir}\n" in out
    assert body(out) == GOLDEN
    target = tmp_path / "out.yaml"
    assert main([*argv, "-o", str(target), "--namespace", "shop", "--max-paths", "1"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"wrote 3 AuthorizationPolicies from 11 calls to {target}\n"
    assert len(load_policies(target).authorization) == 3
    # --max-paths 1: /products and /products/* are not under one directory, nothing changes.
    assert body(target.read_text()) == GOLDEN


def test_cli_generate_errors(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(ledger, edge_events())
    argv = ["policy", "generate", "--since", SINCE, "--data", str(ledger.data_dir)]
    assert main([*argv, "--namespace", "nowhere"]) == 2
    _, err = capsys.readouterr()
    assert "no inbound calls recorded to namespace nowhere in the window" in err
    assert main([*argv, "-o", str(tmp_path / "missing" / "x.yaml")]) == 2
    _, err = capsys.readouterr()
    assert "-o: cannot write" in err
    with pytest.raises(SystemExit):
        main([*argv, "--max-paths", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
