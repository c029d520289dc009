"""Bad policy files: every refusal names file, document (1-based), field path and the reason."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.model import load_policies

DATA = Path(__file__).parent / "data"
HEAD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: ns
"""


def error_of(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    Path("p.yaml").write_text(textwrap.dedent(text))
    with pytest.raises(PolicyLoadError) as caught:
        load_policies("p.yaml")
    return str(caught.value)


def test_the_issue_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(DATA, "policies", ignore=shutil.ignore_patterns("[!p]*"))
    with pytest.raises(PolicyLoadError) as caught:
        load_policies("policies")
    assert str(caught.value) == (
        "policies/pay.yaml: document 2: spec.rules[0].from[0].source.notRequestPrincipals: "
        "not supported by auditmesh (JWT request authentication is not implemented; "
        "only mTLS peer identities are evaluated)"
    )


UNSUPPORTED = [
    (
        "request-principals",
        "  rules:\n  - from:\n    - source:\n        requestPrincipals: ['*']\n",
        "spec.rules[0].from[0].source.requestPrincipals: not supported by auditmesh (JWT",
    ),
    (
        "remote-ip-blocks",
        "  rules:\n  - from:\n    - source:\n        remoteIpBlocks: ['1.2.3.4']\n",
        "spec.rules[0].from[0].source.remoteIpBlocks: not supported by auditmesh (remote.ip",
    ),
    (
        "not-remote-ip-blocks",
        "  rules:\n  - from:\n    - source:\n        notRemoteIpBlocks: ['1.2.3.4']\n",
        "spec.rules[0].from[0].source.notRemoteIpBlocks: not supported by auditmesh (remote.ip",
    ),
    (
        "service-accounts",
        "  rules:\n  - from:\n    - source:\n        serviceAccounts: ['ns/sa']\n",
        "spec.rules[0].from[0].source.serviceAccounts: not supported by auditmesh "
        "(write principals: <trust-domain>/ns/<ns>/sa/<sa> instead)",
    ),
    (
        "request-auth-claims",
        "  rules:\n  - when:\n    - key: request.auth.claims[iss]\n      values: ['x']\n",
        "spec.rules[0].when[0].key: request.auth.claims[iss]: not supported by auditmesh (JWT",
    ),
    (
        "request-auth-principal",
        "  rules:\n  - when:\n    - key: request.auth.principal\n      values: ['x']\n",
        "spec.rules[0].when[0].key: request.auth.principal: not supported by auditmesh (JWT",
    ),
    (
        "remote-ip",
        "  rules:\n  - when:\n    - key: remote.ip\n      values: ['10.0.0.1']\n",
        "spec.rules[0].when[0].key: remote.ip: not supported by auditmesh (remote.ip",
    ),
    (
        "envoy-filters",
        "  rules:\n  - when:\n    - key: experimental.envoy.filters.a[b]\n      values: ['x']\n",
        "spec.rules[0].when[0].key: experimental.envoy.filters.a[b]: not supported by "
        "auditmesh (Envoy metadata is not available)",
    ),
    (
        "custom-action",
        "  action: CUSTOM\n  provider:\n    name: ext-authz\n  rules:\n  - {}\n",
        "spec.action: CUSTOM (external authorization) is not supported by auditmesh; "
        "use ALLOW, DENY or AUDIT",
    ),
    (
        "provider",
        "  provider:\n    name: ext-authz\n",
        "spec.provider: not supported by auditmesh (CUSTOM only)",
    ),
    (
        "target-ref",
        "  targetRef:\n    kind: Gateway\n    group: gateway.networking.k8s.io\n    name: gw\n",
        "spec.targetRef: not supported by auditmesh (it binds Gateway API resources;",
    ),
    (
        "target-refs",
        "  targetRefs:\n  - kind: Service\n    group: ''\n    name: httpbin\n",
        "spec.targetRefs: not supported by auditmesh (it binds Gateway API resources;",
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in UNSUPPORTED], ids=[c[0] for c in UNSUPPORTED]
)
def test_unsupported_fields_are_refused(
    spec: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = error_of(HEAD + "spec:\n" + spec, tmp_path, monkeypatch)
    assert message.startswith("p.yaml: document 1: " + expected), message


INVALID = [
    (
        "unknown-source-field",
        "  rules:\n  - from:\n    - source:\n        principal: ['x']\n",
        "spec.rules[0].from[0].source.principal: unknown field (expected one of: principals, "
        "notPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks)",
    ),
    (
        "unknown-spec-field",
        "  rule:\n  - {}\n",
        "spec.rule: unknown field (expected one of: action, selector, rules)",
    ),
    (
        "unknown-when-key",
        "  rules:\n  - when:\n    - key: source.port\n      values: ['80']\n",
        "spec.rules[0].when[0].key: unknown attribute 'source.port' (expected one of: source.ip, "
        "source.namespace, source.principal, destination.ip, destination.port, connection.sni, "
        "request.headers[NAME])",
    ),
    (
        "istio-replaced-attribute",
        "  rules:\n  - when:\n    - key: destination.labels[app]\n      values: ['x']\n",
        "spec.rules[0].when[0].key: destination.labels[app]: attribute is replaced by the "
        "workload selector (Istio validation)",
    ),
    (
        "port-as-number",
        "  rules:\n  - to:\n    - operation:\n        ports: [8080]\n",
        "spec.rules[0].to[0].operation.ports[0]: expected a string, "
        'got number 8080 (quote it: "8080")',
    ),
    (
        "list-as-string",
        "  rules:\n  - from:\n    - source:\n        principals: cluster.local/ns/a/sa/b\n",
        "spec.rules[0].from[0].source.principals: expected a list, "
        "got a string 'cluster.local/ns/a/sa/b'",
    ),
    (
        "lowercase-action",
        "  action: allow\n",
        "spec.action: unknown action 'allow' (expected ALLOW, DENY or AUDIT)",
    ),
    (
        "numeric-action",  # quoting would not help: the hint names the words
        "  action: 1\n",
        "spec.action: expected ALLOW, DENY or AUDIT, got number 1",
    ),
    (
        "label-as-number",
        "  selector:\n    matchLabels:\n      version: 2\n",
        'spec.selector.matchLabels[version]: expected a string, got number 2 (quote it: "2")',
    ),
    (
        "empty-source",
        "  rules:\n  - from:\n    - source: {}\n",
        "spec.rules[0].from[0].source: must not be empty (Istio validation)",
    ),
    (
        "null-operation",
        "  rules:\n  - to:\n    - operation:\n",
        "spec.rules[0].to[0].operation: must not be null",
    ),
    (
        "empty-from-list",
        "  rules:\n  - from: []\n",
        "spec.rules[0].from: must not be empty (remove it to match any)",
    ),
    (
        "null-rule",
        "  rules:\n  -\n",
        "spec.rules[0]: a rule must not be null (write {} to match every request)",
    ),
    (
        "when-without-values",
        "  rules:\n  - when:\n    - key: source.ip\n",
        "spec.rules[0].when[0]: at least one of values or notValues must be set for key source.ip",
    ),
    (
        "empty-value",
        "  rules:\n  - to:\n    - operation:\n        methods: ['']\n",
        "spec.rules[0].to[0].operation.methods[0]: empty value not allowed",
    ),
    (
        "bad-ip-block",
        "  rules:\n  - from:\n    - source:\n        ipBlocks: ['10.0.0.0/33']\n",
        "spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range '10.0.0.0/33'",
    ),
    (
        "bad-when-port",
        "  rules:\n  - when:\n    - key: destination.port\n      notValues: ['http']\n",
        "spec.rules[0].when[0].notValues[0]: bad port 'http': "
        "expected a decimal number in [0, 65535]",
    ),
    (
        "bad-path-template",
        "  rules:\n  - to:\n    - operation:\n        paths: ['/{**}/foo/{*}']\n",
        "spec.rules[0].to[0].operation.paths[0]: {**} must be the last operator in a path template",
    ),
    (
        "header-key-without-name",
        "  rules:\n  - when:\n    - key: request.headers[]\n      values: ['x']\n",
        "spec.rules[0].when[0].key: bad key 'request.headers[]': should be request.headers[NAME]",
    ),
    (
        "pseudo-header",
        "  rules:\n  - when:\n    - key: request.headers[:path]\n      values: ['/admin*']\n",
        "spec.rules[0].when[0].key: request.headers[:path]: pseudo-headers are not supported",
    ),
    (
        "principal-with-scheme",
        "  rules:\n  - from:\n    - source:\n        principals: ['spiffe://cluster.local/ns/a/sa/b']\n",
        "spec.rules[0].from[0].source.principals[0]: write the principal without spiffe://",
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_fields_are_refused(
    spec: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = error_of(HEAD + "spec:\n" + spec, tmp_path, monkeypatch)
    assert message.startswith("p.yaml: document 1: " + expected), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: 1\n  b: 2\n",
            "p.yaml: line 2, column 4: invalid YAML: mapping values are not allowed",
        ),
        (
            HEAD + "spec:\n  rules: [{}\n",
            "p.yaml: line 8, column 1: invalid YAML: did not find expected ',' or ']'",
        ),
        (HEAD + "  name: q\n", "p.yaml: line 6, column 3: invalid YAML: duplicate key 'name'"),
        ("- a\n- b\n", "p.yaml: document 1: (document): expected a mapping, got a list"),
        ("kind: 3\napiVersion: v1\n", "p.yaml: document 1: not a Kubernetes object"),
        (
            HEAD.replace("/v1", "/v1alpha1"),
            "p.yaml: document 1: apiVersion: 'security.istio.io/v1alpha1' is not supported",
        ),
        (
            HEAD.replace("  namespace: ns\n", "") + "spec: {}\n",
            "p.yaml: document 1: metadata.namespace: required (or pass --namespace",
        ),
        (
            HEAD + "spec: {}\nextra: 1\n",
            "p.yaml: document 1: extra: unknown field "
            "(expected one of: apiVersion, kind, metadata,",
        ),
        (
            HEAD + "  annotations:\n    istio.io/dry-run: true\nspec: {}\n",
            "p.yaml: document 1: metadata.annotations[istio.io/dry-run]: expected a string, "
            'got boolean true (quote it: "true")',
        ),
        (
            HEAD + "  annotations:\n    istio.io/dry-run: 'yes'\nspec: {}\n",
            'p.yaml: document 1: metadata.annotations[istio.io/dry-run]: expected "true" or '
            "\"false\", got 'yes'",
        ),
        (
            HEAD + "spec: {}\n---\n" + HEAD + "spec: {}\n",
            "p.yaml: document 2: metadata.name: AuthorizationPolicy ns/p is also defined in "
            "p.yaml: document 1",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- "
            + HEAD.replace("\n", "\n  ").rstrip()
            + "\n  spec:\n    action: CUSTOM\n",
            "p.yaml: document 1: items[0].spec.action: CUSTOM (external authorization)",
        ),
        (
            "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",
            "p.yaml: line 1, column 4: invalid YAML: YAML anchors and aliases (&name, *name) "
            "are not supported",
        ),
        (
            HEAD.replace("AuthorizationPolicy", "AuthorisationPolicy") + "spec: {}\n",
            "p.yaml: document 1: kind: 'AuthorisationPolicy' is not a kind of security.istio.io",
        ),
        (HEAD + "spec: []\n", "p.yaml: document 1: spec: expected a mapping, got a list"),
        (
            HEAD.replace("AuthorizationPolicy", "PeerAuthentication")
            + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n"
            + "    8080: {mode: DISABLE}\n    '8080': {mode: STRICT}\n",
            "p.yaml: document 1: spec.portLevelMtls[8080]: port given twice",
        ),
    ],
    ids=[
        "bad-yaml",
        "unclosed-flow",
        "duplicate-key",
        "not-a-mapping",
        "kind-not-a-string",
        "old-api-version",
        "no-namespace",
        "unknown-top-level",
        "dry-run-unquoted",
        "dry-run-not-a-bool",
        "duplicate-policy",
        "list-item-path",
        "alias",
        "misspelt-kind",
        "spec-not-a-mapping",
        "port-twice",
    ],
)
def test_document_errors(
    text: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = error_of(text, tmp_path, monkeypatch)
    assert message.startswith(expected), message


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="no-such: no such file or directory"):
        load_policies(tmp_path / "no-such")


def test_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("p.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyLoadError, match="^p.yaml: cannot read"):
        load_policies("p.yaml")


def test_default_namespace_plays_kubectl_n(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(HEAD.replace("  namespace: ns\n", "") + "spec: {}\n")
    (policy,) = load_policies(tmp_path, default_namespace="foo").authorization
    assert policy.key == "foo/p"


def test_other_kinds_are_skipped_and_reported() -> None:
    policies = load_policies(DATA / "mixed-kinds.yaml")
    assert [p.key for p in policies.authorization] == ["foo/httpbin"]
    assert [(s.origin.document, s.api_version, s.kind) for s in policies.skipped] == [
        (1, "apps/v1", "Deployment"),
        (2, "v1", "ServiceAccount"),
    ]


def test_directory_is_searched_recursively_skipping_hidden(tmp_path: Path) -> None:
    (tmp_path / "team" / "a").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "team" / "a" / "p.yml").write_text(HEAD + "spec: {}\n")
    (tmp_path / ".git" / "q.yaml").write_text("not: [valid\n")
    (tmp_path / "notes.txt").write_text("not yaml")
    policies = load_policies(tmp_path)
    assert [p.origin.file for p in policies.authorization] == [
        str(tmp_path / "team" / "a" / "p.yml")
    ]


PEER = HEAD.replace("AuthorizationPolicy", "PeerAuthentication")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            # PyYAML raised a bare ValueError (a traceback) for a date that is not one.
            HEAD.replace("  name: p\n", "  name: p\n  creationTimestamp: 2020-13-45\n")
            + "spec: {}\n",
            "p.yaml: line 5, column 22: invalid YAML: not a valid date or time "
            "(month must be in 1..12); quote it",
        ),
        (
            "a: 0000-01-01\n",
            "p.yaml: line 1, column 4: invalid YAML: not a valid date or time",
        ),
        (
            # "²".isdigit() is True, int("²") raised ValueError.
            PEER + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n"
            "    '²': {mode: STRICT}\n",
            "p.yaml: document 1: spec.portLevelMtls[²]: port must be a number in [1, 65535]",
        ),
        (
            # int() refuses strings of more than 4300 digits with Python's own message.
            HEAD
            + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: ['"
            + "9" * 5000
            + "']\n",
            "p.yaml: document 1: spec.rules[0].to[0].operation.ports[0]: bad port '999",
        ),
        (
            PEER + "spec:\n  mtls: {mode: true}\n",  # YAML 1.1: `on`, `yes` are booleans too
            "p.yaml: document 1: spec.mtls.mode: expected STRICT, PERMISSIVE, DISABLE or UNSET, "
            "got boolean true",
        ),
        (
            HEAD.replace("name: p", "name: ''") + "spec: {}\n",
            "p.yaml: document 1: metadata.name: must not be empty",
        ),
        (
            HEAD.replace("namespace: ns", "namespace: ''") + "spec: {}\n",
            "p.yaml: document 1: metadata.namespace: must not be empty",
        ),
    ],
    ids=[
        "bad-date",
        "year-zero",
        "superscript-port",
        "huge-port",
        "boolean-mode",
        "empty-name",
        "empty-ns",
    ],
)
def test_values_that_crashed_or_passed(
    text: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = error_of(text, tmp_path, monkeypatch)
    assert message.startswith(expected), message
    assert "Exceeds the limit" not in message


def test_huge_port_level_key_in_json(tmp_path: Path) -> None:
    """A JSON key may be any length: int() must not see 5000 digits."""
    doc = (
        '{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",'
        ' "metadata": {"name": "p", "namespace": "ns"},'
        ' "spec": {"selector": {"matchLabels": {"app": "a"}},'
        ' "portLevelMtls": {"' + "9" * 5000 + '": {"mode": "STRICT"}}}}'
    )
    (tmp_path / "p.json").write_text(doc)
    with pytest.raises(PolicyLoadError, match="port must be a number in"):
        load_policies(tmp_path / "p.json")


def test_leading_zeros_in_a_port_still_read(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        HEAD + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: ['0000000080']\n"
    )
    (policy,) = load_policies(tmp_path / "p.yaml").authorization
    assert policy.rules[0].operations[0].ports == ("0000000080",)
