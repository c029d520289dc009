"""`auditmesh policy check` and `auditmesh policy eval`, through the real entry point."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from auditmesh.cli.main import main

DATA = Path(__file__).parent / "data"
VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "policy_semantics.json").read_text()
)["vectors"]
HTTPBIN_GET = {
    "source": {"principal": "spiffe://cluster.local/ns/default/sa/sleep"},
    "destination": {"namespace": "foo"},
    "request": {"method": "GET", "path": "/info"},
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("vector", VECTORS[::5], ids=[v["id"] for v in VECTORS[::5]])
def test_eval_prints_the_decision(
    vector: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "eval",
        "--policies",
        str(DATA / vector["policies"]),
        "--request",
        json.dumps(vector["request"]),
    ]
    if "root_namespace" in vector:
        argv += ["--root-namespace", vector["root_namespace"]]
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    printed = json.loads(out)
    assert list(printed) == ["decision", "policy", "rule", "audit", "dry_run"]
    assert printed == vector["expect"]


def test_eval_dry_run_object(capsys: pytest.CaptureFixture[str]) -> None:
    request = {
        "destination": {"namespace": "ns1", "labels": {"app": "myapi"}},
        "request": {"path": "/headers"},
    }
    code, out, _ = run(
        capsys,
        "eval",
        "--policies",
        str(DATA / "audit-dry-run.yaml"),
        "--request",
        json.dumps(request),
    )
    assert code == 0
    assert json.loads(out) == {
        "decision": "allow",
        "policy": None,
        "rule": None,
        "audit": False,
        "dry_run": {"decision": "deny", "policy": "ns1/deny-path-headers", "rule": 0},
    }


def test_eval_request_from_file_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "req.json").write_text(json.dumps(HTTPBIN_GET))
    policies = str(DATA / "httpbin-allow.yaml")
    code, from_file, _ = run(
        capsys, "eval", "--policies", policies, "--request", f"@{tmp_path / 'req.json'}"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(HTTPBIN_GET)))
    code2, from_stdin, _ = run(capsys, "eval", "--policies", policies, "--request", "@-")
    assert code == code2 == 0
    assert json.loads(from_file) == json.loads(from_stdin)
    assert json.loads(from_file)["policy"] == "foo/httpbin"


def test_eval_namespace_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (DATA / "allow-nothing.yaml").read_text().replace(" namespace: foo\n", "")
    (tmp_path / "p.yaml").write_text(text)
    request = json.dumps({"destination": {"namespace": "bar"}, "request": {}})
    code, out, _ = run(
        capsys, "eval", "--policies", str(tmp_path), "--namespace", "bar", "--request", request
    )
    assert (code, json.loads(out)["decision"]) == (0, "deny")


@pytest.mark.parametrize(
    ("request_text", "message"),
    [
        ("{not json", "auditmesh: error: --request: invalid JSON: Expecting property name"),
        (
            '{"destination": {"namespace": "foo"}, "extra": 1}',
            "auditmesh: error: --request: extra: unknown key",
        ),
        ('{"source": {}}', "auditmesh: error: --request: destination.namespace is required"),
        (
            '{"source": {"namespace": "a"}, "destination": {"namespace": "foo"}}',
            "auditmesh: error: --request: source.namespace needs source.principal",
        ),
        (
            "@/nonexistent/req.json",
            "auditmesh: error: --request: cannot read /nonexistent/req.json",
        ),
    ],
    ids=["bad-json", "unknown-key", "no-namespace", "namespace-alone", "missing-file"],
)
def test_eval_bad_request(
    request_text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "eval", "--policies", str(DATA / "httpbin-allow.yaml"), "--request", request_text
    )
    assert (code, out) == (2, "")
    assert err.startswith(message), err


def test_eval_bad_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "eval", "--policies", str(DATA / "pay.yaml"), "--request", json.dumps(HTTPBIN_GET)
    )
    assert (code, out) == (2, "")
    assert err == (
        f"auditmesh: error: {DATA / 'pay.yaml'}: document 2: "
        "spec.rules[0].from[0].source.notRequestPrincipals: not supported by auditmesh "
        "(JWT request authentication is not implemented; only mTLS peer identities are evaluated)\n"
    )


def test_check_lists_effective_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("policies").mkdir()
    for name in ("mixed-kinds.yaml", "peerauth.yaml", "audit-dry-run.yaml", "allow-nothing.yaml"):
        shutil.copy(DATA / name, Path("policies") / name)
    code, out, err = run(capsys, "check", "policies")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert (
        lines[0] == "ok: 5 AuthorizationPolicy, 4 PeerAuthentication in 4 file(s); "
        "root namespace istio-system"
    )
    assert (
        "skipped policies/mixed-kinds.yaml: document 1: apps/v1 Deployment (not a policy kind)"
        in lines
    )
    assert (
        "skipped policies/mixed-kinds.yaml: document 2: v1 ServiceAccount (not a policy kind)"
        in lines
    )
    block = out.split("\n\n")
    httpbin = next(b for b in block if b.startswith("foo: workloads labelled app=httpbin"))
    assert httpbin.splitlines()[1:] == [
        "  authorization: requests are denied unless an ALLOW rule matches",
        "    ALLOW  foo/allow-nothing                        no rules: allows nothing",
        "    ALLOW  foo/httpbin                              1 rule",
        "  mTLS: STRICT (mesh policy istio-system/default)",
    ]
    finance = next(b for b in block if b.startswith("foo: workloads labelled app=finance"))
    assert (
        finance.splitlines()[-1]
        == "  mTLS: STRICT (workload policy foo/finance); port 8080 DISABLE"
    )
    myapi = next(b for b in block if b.startswith("ns1: workloads labelled app=myapi"))
    assert (
        "    DENY   ns1/deny-path-headers                    1 rule"
        "  (dry-run: evaluated, not enforced)" in myapi
    )
    legacy = next(b for b in block if b.startswith("legacy: all workloads"))
    assert legacy.splitlines()[1:] == [
        "  authorization: no policy, every request is allowed",
        "  mTLS: PERMISSIVE (namespace policy legacy/default)",
    ]


def test_check_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(DATA / "pay.yaml"))
    assert (code, out) == (2, "")
    assert "pay.yaml: document 2: spec.rules[0].from[0].source.notRequestPrincipals" in err


def test_check_refuses_a_policy_defined_twice(capsys: pytest.CaptureFixture[str]) -> None:
    # The fixtures directory as a whole defines foo/allow-all in two files.
    code, _, err = run(capsys, "check", str(DATA))
    assert code == 2
    assert err == (
        f"auditmesh: error: {DATA / 'deny-dev-post.yaml'}: document 2: metadata.name: "
        f"AuthorizationPolicy foo/allow-all is also defined in {DATA / 'allow-all.yaml'}: "
        "document 1\n"
    )


def test_check_root_namespace_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(DATA / "scoping.yaml", tmp_path)
    code, out, _ = run(capsys, "check", str(tmp_path), "--root-namespace", "mesh-root")
    assert code == 0
    assert "root namespace mesh-root" in out.splitlines()[0]
    assert "mesh-root (and any namespace without policies): all workloads" in out


def test_policy_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert (code, out) == (2, "")
    assert "check" in err and "eval" in err


def deny_in_prod(directory: Path, name: str, rule: str) -> None:
    """`directory`/p.yaml: a DENY policy `name` in namespace prod with one rule."""
    (directory / "p.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: prod}}\nspec:\n  action: DENY\n"
        f"  rules:\n  - {rule}\n"
    )


def test_eval_cluster_local_principals_name_the_mesh_trust_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Istio ReplaceTrustDomainAliases: `cluster.local/...` in a policy means the local trust
    # domain, so a DENY written for the default still holds in a mesh of example.org.
    deny_in_prod(
        tmp_path,
        "deny-batch",
        'from: [{source: {principals: ["cluster.local/ns/legacy/sa/batch"]}}]',
    )
    request = json.dumps(
        {
            "source": {"principal": "spiffe://example.org/ns/legacy/sa/batch"},
            "destination": {"namespace": "prod"},
        }
    )
    base = ("eval", "--policies", str(tmp_path), "--request", request)
    code, out, _ = run(capsys, *base, "--trust-domain", "example.org")
    assert (code, json.loads(out)["policy"]) == (0, "prod/deny-batch")
    code, out, _ = run(capsys, *base)  # a mesh of cluster.local: another domain's workload
    assert (code, json.loads(out)["decision"]) == (0, "allow")
    code, _, err = run(capsys, *base, "--trust-domain", "a/b")
    assert code == 2 and "--trust-domain: invalid trust domain 'a/b'" in err
    # regression: the documented default, the trust domain of the mesh CA in --data, was
    # never read by eval and check (they had no --data)
    data = tmp_path / "data"
    assert main(["ca", "init", "--trust-domain", "example.org", "--data", str(data)]) == 0
    capsys.readouterr()
    # (the policy file, not the directory: a CA's files in a policy directory are refused)
    in_file = ("eval", "--policies", str(tmp_path / "p.yaml"), "--request", request)
    code, out, _ = run(capsys, *in_file, "--data", str(data))
    assert (code, json.loads(out)["policy"]) == (0, "prod/deny-batch")
    code, _, err = run(capsys, "check", str(tmp_path / "p.yaml"), "--data", str(data))
    assert code == 0, err


def test_eval_normalizes_the_path_as_the_sidecar_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deny_in_prod(tmp_path, "deny-admin", 'to: [{operation: {paths: ["/admin*"]}}]')

    def decide(path: str) -> tuple[int, str, str]:
        request = json.dumps({"destination": {"namespace": "prod"}, "request": {"path": path}})
        return run(capsys, "eval", "--policies", str(tmp_path), "--request", request)

    for sneaky in ("/public/../%61dmin/x?q=1", "/./admin", "\\admin"):
        code, out, _ = decide(sneaky)
        assert (code, json.loads(out)["policy"]) == (0, "prod/deny-admin"), sneaky
    code, _, err = decide("/%zz")
    assert code == 2 and "--request: request.path: malformed percent-encoding '%zz'" in err


def test_eval_takes_the_principal_with_or_without_spiffe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Istio derives source.principal from the SPIFFE ID by dropping spiffe://; every other
    # command prints the ID whole, so both forms name the same caller
    deny_in_prod(
        tmp_path, "deny-batch", 'from: [{source: {principals: ["cluster.local/ns/prod/sa/batch"]}}]'
    )
    for principal in ("spiffe://cluster.local/ns/prod/sa/batch", "cluster.local/ns/prod/sa/batch"):
        request = {"source": {"principal": principal}, "destination": {"namespace": "prod"}}
        argv = ("eval", "--policies", str(tmp_path), "--request", json.dumps(request))
        code, out, _ = run(capsys, *argv)
        assert (code, json.loads(out)["policy"]) == (0, "prod/deny-batch"), principal
    with pytest.raises(SystemExit):
        main(["policy", "eval", "--help"])
    assert "source.principal with or without spiffe://" in " ".join(capsys.readouterr().out.split())
