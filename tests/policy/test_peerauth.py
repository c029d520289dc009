"""PeerAuthentication: mode precedence workload > namespace > mesh, port-level mTLS, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.model import load_policies
from auditmesh.policy.peerauth import MtlsResolver, accepts

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def resolver() -> MtlsResolver:
    return MtlsResolver(load_policies(DATA / "peerauth.yaml"))


@pytest.mark.parametrize(
    ("namespace", "labels", "port", "expected"),
    [
        ("bar", {}, None, ("STRICT", "istio-system/default", "mesh")),
        ("istio-system", {"app": "x"}, None, ("STRICT", "istio-system/default", "mesh")),
        ("legacy", {"app": "x"}, None, ("PERMISSIVE", "legacy/default", "namespace")),
        ("foo", {"app": "finance"}, None, ("STRICT", "foo/finance", "workload")),
        ("foo", {"app": "finance"}, 8080, ("DISABLE", "foo/finance", "port")),
        # portLevelMtls UNSET inherits the workload mode.
        ("foo", {"app": "finance"}, 9090, ("STRICT", "foo/finance", "workload")),
        ("foo", {"app": "finance"}, 1234, ("STRICT", "foo/finance", "workload")),
        # A workload policy without mtls inherits the mesh mode; its port level still applies.
        ("foo", {"app": "exporter"}, None, ("STRICT", "istio-system/default", "mesh")),
        ("foo", {"app": "exporter"}, 9100, ("PERMISSIVE", "foo/metrics-only", "port")),
        ("foo", {"app": "other"}, 8080, ("STRICT", "istio-system/default", "mesh")),
    ],
    ids=[
        "mesh-wide",
        "root-namespace-workload-uses-mesh",
        "namespace-overrides-mesh",
        "workload-overrides-namespace",
        "port-overrides-workload",
        "port-unset-inherits",
        "unlisted-port",
        "workload-unset-inherits",
        "port-level-without-workload-mode",
        "selector-not-matching",
    ],
)
def test_precedence(
    resolver: MtlsResolver,
    namespace: str,
    labels: dict[str, str],
    port: int | None,
    expected: tuple[str, str, str],
) -> None:
    decision = resolver.mode(namespace, labels, port)
    assert (decision.mode, decision.policy, decision.level) == expected


def test_default_without_policies_is_permissive() -> None:
    decision = MtlsResolver([]).mode("foo", {})
    assert (decision.mode, decision.policy, decision.level) == ("PERMISSIVE", None, "default")


@pytest.mark.parametrize(
    ("mode", "mtls", "plaintext"),
    [("STRICT", True, False), ("PERMISSIVE", True, True), ("DISABLE", False, True)],
)
def test_accepts(mode: str, mtls: bool, plaintext: bool) -> None:
    assert accepts(mode, mtls=True) is mtls  # type: ignore[arg-type]
    assert accepts(mode, mtls=False) is plaintext  # type: ignore[arg-type]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pa.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_oldest_policy_wins_and_conflicts_are_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: a-newer
          namespace: foo
          creationTimestamp: "2024-05-02T00:00:00Z"
        spec:
          mtls:
            mode: DISABLE
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: b-older
          namespace: foo
          creationTimestamp: 2024-05-01T00:00:00Z
        spec:
          mtls:
            mode: STRICT
        """,
    )
    resolver = MtlsResolver(load_policies(path))
    assert resolver.mode("foo", {}).policy == "foo/b-older"
    assert [(a.name, b.name) for a, b in resolver.conflicts()] == [("b-older", "a-newer")]


@pytest.mark.parametrize(
    ("spec", "namespace", "expected"),
    [
        (
            "portLevelMtls:\n  80:\n    mode: DISABLE\n",
            "foo",
            "spec.portLevelMtls: requires a workload selector (Istio validation)",
        ),
        (
            "selector:\n  matchLabels:\n    app: a\n",
            "istio-system",
            "spec.selector: Istio ignores a selector on a PeerAuthentication in the root namespace",
        ),
        (
            "mtls:\n  mode: strict\n",
            "foo",
            "spec.mtls.mode: unknown mode 'strict' (expected STRICT, PERMISSIVE, DISABLE or UNSET)",
        ),
        (
            "selector:\n  matchLabels:\n    app: a\nportLevelMtls:\n  http:\n    mode: DISABLE\n",
            "foo",
            "spec.portLevelMtls[http]: port must be a number in [1, 65535]",
        ),
        ("mtls:\n  mode: STRICT\n  extra: 1\n", "foo", "spec.mtls.extra: unknown field"),
    ],
    ids=["port-level-needs-selector", "root-selector", "mode-case", "port-name", "unknown-key"],
)
def test_errors(tmp_path: Path, spec: str, namespace: str, expected: str) -> None:
    head = (
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n"
        f"  name: p\n  namespace: {namespace}\nspec:\n"
    )
    path = tmp_path / "pa.yaml"
    path.write_text(head + textwrap.indent(spec, "  "))
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(path)
    assert str(caught.value).startswith(f"{path}: document 1: {expected}"), str(caught.value)
