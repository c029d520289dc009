"""Istio AuthorizationPolicy semantics, one known-answer vector per rule.

The vectors live in tests/vectors/policy_semantics.json; each names the rule of the Istio
reference it checks and uses a real policy file from tests/policy/data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditmesh.policy.documents import Origin
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import AuthorizationPolicy, PolicySet, load_policies
from auditmesh.policy.request import Request
from auditmesh.policy.rules import Condition, Rule, Source

DATA = Path(__file__).parent / "data"
VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "policy_semantics.json").read_text()
)["vectors"]
_loaded: dict[tuple[str, str], PolicySet] = {}


def _policies(name: str, root: str) -> PolicySet:
    if (name, root) not in _loaded:
        _loaded[name, root] = load_policies(DATA / name, root_namespace=root)
    return _loaded[name, root]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    policies = _policies(vector["policies"], vector.get("root_namespace", "istio-system"))
    decision = PolicyEngine(policies).evaluate(Request.from_json(vector["request"]))
    assert decision.to_json() == vector["expect"], vector["rule"]


def test_every_fixture_is_used_by_a_vector() -> None:
    used = {v["policies"] for v in VECTORS}
    fixtures = {p.name for p in DATA.glob("*.yaml")} - {
        "mixed-kinds.yaml",
        "peerauth.yaml",
        "pay.yaml",
    }
    assert fixtures <= used


def test_decision_is_frozen_and_reused() -> None:
    engine = PolicyEngine(_policies("httpbin-allow.yaml", "istio-system"))
    request = Request.from_json(VECTORS[0]["request"])
    first, second = engine.evaluate(request), engine.evaluate(request)
    assert first is second
    with pytest.raises(AttributeError):
        first.decision = "deny"  # type: ignore[misc]


def test_decision_names_the_audit_policy() -> None:
    engine = PolicyEngine(_policies("audit-dry-run.yaml", "istio-system"))
    request = Request.of(
        destination_namespace="ns1",
        destination_labels={"app": "myapi"},
        method="GET",
        path="/user/profile/9",
    )
    decision = engine.evaluate(request)
    assert (decision.audit, decision.audit_policy, decision.audit_rule) == (True, "ns1/anyname", 0)
    assert decision.allowed


def test_sidecar_holds_one_authorizer_per_workload() -> None:
    engine = PolicyEngine(_policies("scoping.yaml", "istio-system"))
    labels = {"app": "httpbin", "version": "v1"}
    authorizer = engine.for_workload("bar", labels)
    assert authorizer is engine.for_workload("bar", {"version": "v1", "app": "httpbin"})
    assert [p.key for p in authorizer.policies] == ["bar/httpbin-v1", "istio-system/deny-trace"]
    request = Request.of(destination_namespace="bar", destination_labels=labels, method="GET")
    assert authorizer.evaluate(request) == engine.evaluate(request)


def test_presence_on_a_header_matches_an_empty_value_too() -> None:
    # Istio emits Envoy's present_match for request.headers[NAME] "*" (matcher.HeaderMatcher):
    # a header sent empty is present. Otherwise `x-debug:` would slip past a DENY on presence.
    policy = AuthorizationPolicy(
        "ns",
        "p",
        "ALLOW",
        None,
        (Rule(conditions=(Condition("request.headers[x-id]", ("*",), (), "x-id"),)),),
        False,
        Origin("inline", 1),
    )
    engine = PolicyEngine([policy])

    def decide(value: str | None) -> str:
        headers = {} if value is None else {"X-Id": value}
        return engine.evaluate(Request.of(destination_namespace="ns", headers=headers)).decision

    assert (decide("7"), decide(""), decide(None)) == ("allow", "allow", "deny")


def test_namespaces_match_the_principal_as_istio_does() -> None:
    # Istio srcNamespaceGenerator: regex `.*/ns/NS/.*` over the principal, `*` anywhere.
    def denied(pattern: str, principal: str) -> bool:
        policy = AuthorizationPolicy(
            "ns",
            "p",
            "DENY",
            None,
            (Rule(sources=(Source(namespaces=(pattern,)),)),),
            False,
            Origin("inline", 1),
        )
        request = Request.of(destination_namespace="ns", source_principal=principal)
        return not PolicyEngine([policy]).evaluate(request).allowed

    assert denied("team-*-east", "spiffe://cluster.local/ns/team-a-east/sa/x")
    assert not denied("team-*-east", "spiffe://cluster.local/ns/team-a-west/sa/x")
    assert denied("foo", "spiffe://example.org/ns/foo/sa/bar/extra")  # a longer SPIFFE path
    assert not denied("foo", "spiffe://example.org/ns/foobar/sa/x")
