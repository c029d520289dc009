"""Parsers fuzzed: any input yields a value or the one domain error, never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import load_policies
from auditmesh.policy.request import Request, RequestError

KEYS = [
    "rules", "from", "to", "when", "source", "operation", "principals", "notPaths", "ports",
    "ipBlocks", "key", "values", "notValues", "selector", "matchLabels", "action", "mtls",
    "mode", "portLevelMtls", "hosts", "methods", "paths", "namespaces",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1, 70000),
    st.sampled_from(["ALLOW", "DENY", "STRICT", "*", "/a/{*}", "10.0.0.0/8", "80", "", "x"]),
    st.text(max_size=5),
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["AuthorizationPolicy", "PeerAuthentication"]), trees)
def test_policy_documents(tmp_path: Path, kind: str, spec: Any) -> None:
    document = {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        policies = load_policies(path)
    except PolicyLoadError as exc:
        assert str(exc).startswith(f"{path}: document 1: "), str(exc)
        return
    request = Request.of(destination_namespace="ns", method="GET", path="/a/b")
    assert PolicyEngine(policies).evaluate(request).decision in ("allow", "deny")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_raw_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(data)
    try:
        load_policies(path)
    except PolicyLoadError as exc:
        assert str(exc).startswith(str(path)), str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(
            ["source", "destination", "request", "connection", "namespace", "labels", "principal",
             "ip", "port", "method", "path", "host", "headers", "sni"]
        ) | st.text(max_size=3),
        inner,
        max_size=4,
    ),
    max_leaves=15,
)  # fmt: skip


@given(json_values)
def test_request_json(obj: Any) -> None:
    try:
        request = Request.from_json(json.loads(json.dumps(obj)))
    except RequestError:
        return
    assert request.destination_namespace is not None
