"""Requests on which auditmesh once decided otherwise than Istio, each held to Istio's answer.

Each test loads a policy file as ``policy eval`` and the sidecar do (:func:`load_policies`) and
names the Istio text or code the expected decision comes from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import load_policies
from auditmesh.policy.request import Request


def _engine(
    tmp_path: Path, action: str, rule: str, trust_domain: str = "cluster.local"
) -> PolicyEngine:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: p, namespace: prod}}\nspec:\n  action: {action}\n"
        f"  rules:\n  - {rule}\n"
    )
    return PolicyEngine(load_policies(tmp_path / "p.yaml"), trust_domain=trust_domain)


@pytest.mark.parametrize(
    ("pattern", "principal", "expected"),
    [
        # <td>/ns/NS/sa/SA: cluster.local names the mesh's own trust domain.
        ("cluster.local/ns/foo/sa/bar", "example.org/ns/foo/sa/bar", "allow"),
        ("cluster.local/ns/foo/sa/*", "example.org/ns/foo/sa/bar", "allow"),
        # Any other shape is kept as written, so it names cluster.local and nothing else.
        ("cluster.local/ns/foo/*", "example.org/ns/foo/sa/bar", "deny"),
        ("cluster.local/ns/foo/*", "cluster.local/ns/foo/sa/bar", "allow"),
        ("cluster.local/*", "example.org/ns/foo/sa/bar", "deny"),
        ("cluster.local/ns/foo/sa/bar/x", "example.org/ns/foo/sa/bar/x", "deny"),
    ],
)
def test_cluster_local_is_replaced_only_in_a_spiffe_shaped_principal(
    tmp_path: Path, pattern: str, principal: str, expected: str
) -> None:
    # Istio pilot/pkg/security/trustdomain/bundle.go, ReplaceTrustDomainAliases: the trust domain
    # of a principal is replaced only when it "is presented as
    # <trust-domain>/ns/<some-namespace>/sa/<some-service-account>" (isTrustDomainBeingEnforced:
    # `len(strings.Split(principal, "/")) != 5` → "the trust domain is also considered not being
    # enforced" and the principal is kept as it is).
    engine = _engine(
        tmp_path, "ALLOW", f'from: [{{source: {{principals: ["{pattern}"]}}}}]', "example.org"
    )
    request = Request.of(destination_namespace="prod", source_principal=principal)
    assert engine.evaluate(request).decision == expected


@pytest.mark.parametrize(
    ("action", "field", "host", "expected"),
    [
        ("DENY", "hosts", "", "deny"),  # `Host:` sent empty is a host header all the same
        ("DENY", "hosts", "api.example", "deny"),
        ("DENY", "notHosts", "", "allow"),
        ("ALLOW", "hosts", "", "allow"),
        ("ALLOW", "notHosts", "", "deny"),
        ("ALLOW", "notHosts", None, "allow"),  # no Host at all (HTTP/1.0)
    ],
)
def test_hosts_presence_is_envoys_present_match(
    tmp_path: Path, action: str, field: str, host: str | None, expected: str
) -> None:
    # Istio pilot/pkg/security/authz/matcher/header.go, HostMatcher: `if v == "*"` the :authority
    # matcher is Envoy's `present_match`, true for a header that is there, empty or not (RFC 9112
    # §3.2 has a client send `Host:` with an empty value when the target has no authority).
    engine = _engine(tmp_path, action, f'to: [{{operation: {{{field}: ["*"]}}}}]')
    request = Request.of(destination_namespace="prod", http=True, method="GET", host=host)
    assert engine.evaluate(request).decision == expected
