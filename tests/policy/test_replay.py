"""`auditmesh policy replay` and auditmesh.policy.replay over real ledgers.

Ledgers are filled with the simulated shop traffic of tests/conftest.py (frontend, orders and
batch-report calling catalog, orders and payments in namespace `shop`; batch-report → payments is
recorded denied) and with events built by hand for the edge cases.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from auditmesh.cli.main import main
from auditmesh.datadir import Ledger
from auditmesh.events import HTTP, TCP, AuditEvent, Authz, Peer, new_event_id
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import load_policies
from auditmesh.policy.replay import (
    NO_ALLOW_MATCHED,
    NO_ALLOW_POLICY,
    Replay,
    WorkloadsError,
    inbound_call,
    parse_workloads,
    replay,
)
from tests.conftest import START_NS, fill, generate

SINCE = "2025-11-28T03:00:00Z"  # a little before START_NS (2025-11-28T03:20:00Z)
SHOP = "spiffe://cluster.local/ns/shop/sa/"
DENY_BATCH_TO_CATALOG = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-batch
  namespace: shop
spec:
  selector:
    matchLabels:
      app: catalog
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/batch-report"]
"""


def make_event(
    *,
    source: str | None = SHOP + "frontend",
    source_ip: str | None = "10.0.0.10",
    service: str | None = "catalog",
    namespace: str | None = "shop",
    port: int | None = 8080,
    method: str | None = "GET",
    path: str | None = "/products",
    kind: str = "http",
    direction: str = "inbound",
    decision: str | None = "allow",
    time_ns: int = START_NS,
    rng: random.Random | None = None,
    attested: bool = True,
) -> AuditEvent:
    """One audit event as a sidecar reports it; `decision=None` leaves `authz` out."""
    rand = rng or random.Random(time_ns)
    return AuditEvent(
        id=new_event_id(lambda: time_ns, rand.randbytes),
        time_ns=time_ns,
        reporter="spiffe://cluster.local/ns/shop/sa/catalog",
        kind="http" if kind == "http" else "tcp",
        outcome="success",
        direction="inbound" if direction == "inbound" else "outbound",
        source=Peer(identity=source, ip=source_ip, port=40000),
        destination=Peer(service=service, namespace=namespace, port=port),
        http=HTTP(method=method, path=path, status=200) if kind == "http" else None,
        tcp=TCP() if kind == "tcp" else None,
        authz=None if decision is None else Authz(decision=decision),  # type: ignore[arg-type]
        attested=attested,
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def replay_json(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> dict[str, Any]:
    code, out, err = run(
        capsys, "replay", "--since", SINCE, "--data", str(data), "--format", "json", *argv
    )
    assert (code, err) == (0, ""), err
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def shop(ledger: Ledger) -> tuple[Ledger, list[AuditEvent]]:
    events = generate(1500)
    fill(ledger, events, checkpoint_every=500)
    return ledger, events


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def service(identity: str | None) -> str:
    assert identity is not None
    return identity.rsplit("/", 1)[1]


# -- a policy that denies a caller ------------------------------------------------------


def test_deny_a_caller_counts_and_groups_exact(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, events = shop
    policies = write(tmp_path, "deny.yaml", DENY_BATCH_TO_CATALOG)
    report = replay_json(capsys, ledger.data_dir, "--policies", policies)

    def ids(caller: str, callee: str, decision: str) -> list[str]:
        return [
            e.id
            for e in events
            if e.source is not None
            and e.source.identity == SHOP + caller
            and e.destination is not None
            and e.destination.service == callee
            and e.authz is not None
            and e.authz.decision == decision
        ]

    to_catalog = ids("batch-report", "catalog", "allow")
    to_payments = ids("batch-report", "payments", "deny")
    assert to_catalog and to_payments  # the simulation has both
    assert report["newly_denied"] == [
        {
            "source": SHOP + "batch-report",
            "destination": "shop/catalog",
            "policy": "shop/no-batch",
            "rule": 0,
            "reason": "DENY shop/no-batch rule 0",
            "count": len(to_catalog),
            "examples": to_catalog[:3],
        }
    ]
    # The recorded denials came from a policy the candidate set does not have.
    assert report["newly_allowed"] == [
        {
            "source": SHOP + "batch-report",
            "destination": "shop/payments",
            "policy": None,
            "rule": None,
            "reason": NO_ALLOW_POLICY,
            "count": len(to_payments),
            "examples": to_payments[:3],
        }
    ]
    recorded = Counter(e.authz.decision for e in events if e.authz is not None)
    assert report["totals"] == {
        "events": len(events),
        "calls": len(events),
        "attested": 0,
        "recorded": {"allow": recorded["allow"], "deny": recorded["deny"]},
        "candidate": {
            "allow": recorded["allow"] - len(to_catalog) + len(to_payments),
            "deny": recorded["deny"] + len(to_catalog) - len(to_payments),
        },
        "newly_denied": len(to_catalog),
        "newly_allowed": len(to_payments),
        "unchanged": len(events) - len(to_catalog) - len(to_payments),
    }
    assert report["window"]["since"] == SINCE
    assert report["authorization_policies"] == 1
    assert report["caveats"] == []


def test_allow_policy_groups_by_source_and_destination(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path
) -> None:
    """An ALLOW policy on orders for frontend only: batch-report's calls to orders are denied by
    Istio's step 5 (no ALLOW matched); the other workloads keep no policy at all."""
    ledger, events = shop
    policies = load_policies(
        write(
            tmp_path,
            "orders.yaml",
            DENY_BATCH_TO_CATALOG.replace("no-batch", "orders-frontend")
            .replace("app: catalog", "app: orders")
            .replace("DENY", "ALLOW")
            .replace("batch-report", "frontend"),
        )
    )
    report = replay(PolicyEngine(policies), enumerate(events))
    expected = Counter(
        (e.source.identity, f"shop/{e.destination.service}")
        for e in events
        if e.source is not None
        and e.destination is not None
        and e.destination.service == "orders"
        and service(e.source.identity) != "frontend"
        and e.authz is not None
        and e.authz.decision == "allow"
    )
    assert [(c.source, c.destination, c.reason, c.count) for c in report.newly_denied] == [
        (source, destination, NO_ALLOW_MATCHED, count)
        for (source, destination), count in expected.most_common()
    ]
    assert [c.policy for c in report.newly_denied] == [None]
    # Examples are the first event ids in ledger order.
    example_ids = report.newly_denied[0].examples
    order = {e.id: i for i, e in enumerate(events)}
    assert list(example_ids) == sorted(example_ids, key=order.__getitem__)


# -- the generated policies --------------------------------------------------------------


def test_generated_policies_deny_nothing_that_was_allowed(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, _ = shop
    out = tmp_path / "generated.yaml"
    code, _, err = run(
        capsys, "generate", "--since", SINCE, "--data", str(ledger.data_dir), "-o", str(out)
    )
    assert code == 0 and "wrote 3 AuthorizationPolicies" in err
    report = replay_json(capsys, ledger.data_dir, "--policies", str(out))
    assert report["totals"]["newly_denied"] == 0
    assert report["newly_denied"] == []
    # payments has a policy (orders only), so batch-report stays denied: nothing changes.
    assert report["newly_allowed"] == []
    assert report["totals"]["unchanged"] == report["totals"]["calls"] == 1500


# -- read-only, errors ---------------------------------------------------------------------


def _digest(ledger: Ledger) -> tuple[int, str, bytes | None]:
    size = ledger.store.size()
    entries = hashlib.sha256(b"".join(d for _, d in ledger.store.entries(0, size))).hexdigest()
    latest = ledger.store.latest_checkpoint()
    return size, entries, None if latest is None else latest.note


def test_replay_and_generate_never_write_the_ledger(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, _ = shop
    before = _digest(ledger)
    policies = write(tmp_path, "deny.yaml", DENY_BATCH_TO_CATALOG)
    replay_json(capsys, ledger.data_dir, "--policies", policies)
    code, _, _ = run(capsys, "generate", "--since", SINCE, "--data", str(ledger.data_dir))
    assert code == 0
    assert _digest(ledger) == before
    assert {p.name for p in ledger.data_dir.iterdir()} <= {
        "keys",
        "ledger.db",
        "ledger.db-shm",
        "ledger.db-wal",
    }


def test_bad_policy_set_is_a_clear_error(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, _ = shop
    bad = write(tmp_path, "bad.yaml", DENY_BATCH_TO_CATALOG.replace("DENY", "CUSTOM"))
    code, out, err = run(
        capsys, "replay", "--policies", bad, "--since", SINCE, "--data", str(ledger.data_dir)
    )
    assert (code, out) == (2, "")
    assert err.startswith(f"auditmesh: error: {bad}: document 1: spec.action: CUSTOM")


def test_empty_window_is_a_clear_error(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, _ = shop
    policies = write(tmp_path, "deny.yaml", DENY_BATCH_TO_CATALOG)
    window = ("--since", "2025-11-27T00:00:00Z", "--until", "2025-11-28T00:00:00Z")
    for argv in (("replay", "--policies", policies), ("generate",)):
        code, out, err = run(capsys, *argv, *window, "--data", str(ledger.data_dir))
        assert (code, out) == (2, "")
        assert "no inbound calls recorded in the window 2025-11-27T00:00:00Z .. " in err
        assert "(0 events in it)" in err


def test_window_of_only_other_events_is_empty(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(
        ledger, [make_event(direction="outbound"), make_event(namespace=None, time_ns=START_NS + 1)]
    )
    policies = write(tmp_path, "deny.yaml", DENY_BATCH_TO_CATALOG)
    code, _, err = run(
        capsys, "replay", "--policies", policies, "--since", SINCE, "--data", str(ledger.data_dir)
    )
    assert code == 2 and "(2 events in it)" in err


def test_missing_ledger_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = write(tmp_path, "deny.yaml", DENY_BATCH_TO_CATALOG)
    code, _, err = run(
        capsys, "replay", "--policies", policies, "--since", "1h", "--data", str(tmp_path / "no")
    )
    assert code == 2 and "no ledger at" in err
    assert not (tmp_path / "no").exists() or not any((tmp_path / "no").iterdir())
    code, _, err = run(capsys, "replay", "--policies", policies, "--since", "yesterday")
    assert code == 2 and "'yesterday' is neither a duration" in err
    code, _, err = run(capsys, "replay", "--policies", policies, "--since", "1h", "--until", "2h")
    assert code == 2 and "is not after --since" in err


# -- table output ----------------------------------------------------------------------------


def test_table_output(
    shop: tuple[Ledger, list[AuditEvent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger, events = shop
    policies = write(tmp_path, "deny.yaml", DENY_BATCH_TO_CATALOG)
    code, out, err = run(
        capsys, "replay", "--policies", policies, "--since", SINCE, "--data", str(ledger.data_dir)
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"Replayed 1500 inbound calls recorded {SINCE} .. ")
    assert lines[0].endswith(f"against 1 AuthorizationPolicies from {policies}")
    assert "newly denied: " in out and "Newly denied" in out and "Newly allowed" in out
    assert "DENY shop/no-batch rule 0" in out and NO_ALLOW_POLICY in out
    first_denied = next(
        e.id
        for e in events
        if e.source is not None
        and e.source.identity == SHOP + "batch-report"
        and e.destination is not None
        and e.destination.service == "catalog"
    )
    assert first_denied in out


# -- hand-built events: what is replayed, and how ----------------------------------------


def test_which_events_are_calls_and_how_they_read() -> None:
    workloads = {"shop/catalog": {"app": "cat", "tier": "backend"}}
    call = inbound_call(7, make_event(path="/products?page=2"), workloads)
    assert call is not None
    assert (call.index, call.source, call.destination, call.recorded) == (
        7,
        SHOP + "frontend",
        "shop/catalog",
        "allow",
    )
    request = call.request
    assert request.source_principal == "cluster.local/ns/shop/sa/frontend"
    assert request.source_namespace == "shop"
    assert request.destination_labels == (("app", "cat"), ("tier", "backend"))
    assert (request.http, request.method, request.path, request.destination_port) == (
        True,
        "GET",
        "/products",  # Istio matches paths without the query
        8080,
    )
    default = inbound_call(0, make_event(service="orders"), workloads)
    assert default is not None and default.request.destination_labels == (("app", "orders"),)
    # No authz: no policy was in force, the call was allowed; "audit" is an allow too.
    for decision in (None, "audit"):
        recorded = inbound_call(0, make_event(decision=decision), {})
        assert recorded is not None and recorded.recorded == "allow"
    tcp = inbound_call(0, make_event(kind="tcp"), {})
    assert tcp is not None and not tcp.request.http and tcp.request.method is None
    anonymous = inbound_call(0, make_event(source=None, source_ip="not-an-ip"), {})
    assert anonymous is not None and anonymous.source == "unauthenticated not-an-ip"
    assert anonymous.request.source_ip is None and anonymous.request.source_namespace is None
    assert inbound_call(0, make_event(direction="outbound"), {}) is None
    assert inbound_call(0, make_event(namespace=None), {}) is None


def test_replay_hand_built_events(tmp_path: Path) -> None:
    rng = random.Random(1)
    events = [
        make_event(rng=rng, decision=None),  # no authz: allowed
        make_event(rng=rng, source=SHOP + "batch-report"),
        make_event(rng=rng, source=SHOP + "batch-report", kind="tcp", attested=False),
        make_event(rng=rng, source=None, source_ip="192.0.2.7", decision="deny"),
        make_event(rng=rng, direction="outbound"),
    ]
    policies = load_policies(write(tmp_path, "p.yaml", DENY_BATCH_TO_CATALOG))
    report = replay(PolicyEngine(policies), enumerate(events), examples=1)
    assert (report.events, report.calls, report.attested) == (5, 4, 3)
    assert (report.recorded_allowed, report.recorded_denied) == (3, 1)
    assert [(c.source, c.count, c.examples) for c in report.newly_denied] == [
        (SHOP + "batch-report", 2, (events[1].id,))
    ]
    assert [(c.source, c.reason) for c in report.newly_allowed] == [
        ("unauthenticated 192.0.2.7", NO_ALLOW_POLICY)
    ]


def test_workloads_labels_decide_which_policies_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ledger: Ledger
) -> None:
    fill(ledger, [make_event(source=SHOP + "batch-report")])
    policies = write(
        tmp_path, "tier.yaml", DENY_BATCH_TO_CATALOG.replace("app: catalog", "tier: backend")
    )
    plain = replay_json(capsys, ledger.data_dir, "--policies", policies)
    assert plain["totals"]["newly_denied"] == 0  # {app: catalog} has no tier label
    workloads = write(tmp_path, "workloads.yaml", "shop/catalog: {app: catalog, tier: backend}\n")
    labelled = replay_json(
        capsys, ledger.data_dir, "--policies", policies, "--workloads", workloads
    )
    assert labelled["totals"]["newly_denied"] == 1
    bad = write(tmp_path, "bad.yaml", "catalog: {app: catalog}\n")
    code, _, err = run(
        capsys,
        "replay",
        "--policies",
        policies,
        "--since",
        SINCE,
        "--data",
        str(ledger.data_dir),
        "--workloads",
        bad,
    )
    assert code == 2
    assert err == (
        f"auditmesh: error: --workloads: {bad}: 'catalog': expected a key of the form "
        "namespace/service\n"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a mapping of namespace/service to labels"),
        ({"a/b": {}}, "a/b: expected a non-empty mapping of label to value"),
        ({"a/b": {"v": 1}}, "a/b: label 'v': keys and values must be strings (quote numbers)"),
        ({"a/b/c": {"app": "x"}}, "'a/b/c': expected a key of the form namespace/service"),
        ({"/b": {"app": "x"}}, "'/b': expected a key of the form namespace/service"),
    ],
)
def test_parse_workloads_errors(document: object, message: str) -> None:
    with pytest.raises(WorkloadsError) as info:
        parse_workloads(document)
    assert str(info.value) == message


def test_caveats_name_what_events_do_not_record(tmp_path: Path) -> None:
    text = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: h, namespace: shop}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-debug]", values: ["1"]}]
  - to: [{operation: {hosts: ["evil.example"]}}]
"""
    engine = PolicyEngine(load_policies(write(tmp_path, "h.yaml", text)))
    report = replay(engine, [(0, make_event())])
    assert report.caveats == (
        "DENY shop/h rule 0 tests request.headers; recorded events carry no request headers, "
        "so replay treats them as absent",
        "1 of 1 calls have no recorded host, which DENY shop/h rule 1 tests; replay treats it "
        "as absent",
    )


def test_enforce_dry_run(tmp_path: Path) -> None:
    text = DENY_BATCH_TO_CATALOG.replace(
        "  namespace: shop\n", '  namespace: shop\n  annotations: {istio.io/dry-run: "true"}\n'
    )
    engine = PolicyEngine(load_policies(write(tmp_path, "dry.yaml", text)))
    events = [(0, make_event(source=SHOP + "batch-report"))]
    assert replay(engine, events).newly_denied == ()
    (change,) = replay(engine, events, enforce_dry_run=True).newly_denied
    assert (change.policy, change.rule) == ("shop/no-batch", 0)


def test_report_can_be_read_midway() -> None:
    run_ = Replay(PolicyEngine([]))
    run_.add(0, make_event(decision="deny"))
    assert run_.report().newly_allowed_calls == 1
    run_.add(1, make_event(decision="deny", time_ns=START_NS + 5))
    assert run_.report().newly_allowed[0].count == 2
