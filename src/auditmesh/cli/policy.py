"""``auditmesh policy``: check Istio policy files and evaluate one request against them.

Place in the house: a thin layer over :mod:`auditmesh.policy` — it loads, prints, and turns
load and request errors into :class:`~auditmesh.cli.main.UserError`. ``check PATH`` validates
and lists the effective policies per workload; ``eval`` prints the Decision as JSON
``{"decision", "policy", "rule", "audit", "dry_run"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from auditmesh.cli.main import UserError
from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Labels,
    PeerAuthentication,
    PolicySet,
    load_policies,
)
from auditmesh.policy.peerauth import MtlsResolver
from auditmesh.policy.request import Request, RequestError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "policy",
        help="check Istio AuthorizationPolicy/PeerAuthentication files, evaluate a request",
        description="Istio security.istio.io policies, evaluated with Istio's semantics.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    commands = parser.add_subparsers(title="policy commands", metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="validate policy files and list the effective policies per workload",
        description="Validate AuthorizationPolicy and PeerAuthentication YAML (a file, or a "
        "directory of *.yaml/*.yml) and list which policies apply to which workloads.",
    )
    check.add_argument("path", metavar="PATH", help="policy file or directory")
    _common(check)
    check.set_defaults(func=run_check)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate one request and print the decision as JSON",
        description="Evaluate one request against the policies and print "
        '{"decision", "policy", "rule", "audit", "dry_run"}. Request JSON: {"source": '
        '{"principal", "namespace", "ip"}, "destination": {"namespace", "labels", "ip", '
        '"port"}, "request": {"method", "path", "host", "headers"}, "connection": {"sni"}}; '
        "without a request object the call is a TCP connection.",
    )
    evaluate.add_argument("--policies", required=True, metavar="PATH", help="policy file or dir")
    evaluate.add_argument(
        "--request", required=True, metavar="JSON", help="request JSON, @FILE, or @- for stdin"
    )
    _common(evaluate)
    evaluate.set_defaults(func=run_eval)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root-namespace",
        default=ROOT_NAMESPACE,
        metavar="NS",
        help=f"Istio root namespace, whose policies apply mesh-wide (default {ROOT_NAMESPACE})",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="namespace for documents without metadata.namespace (like kubectl apply -n)",
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(path: str, args: argparse.Namespace) -> PolicySet:
    try:
        return load_policies(
            path, root_namespace=args.root_namespace, default_namespace=args.namespace
        )
    except PolicyLoadError as exc:
        raise UserError(str(exc)) from None


def _read_request(text: str) -> Request:
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--request: cannot read {source}: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--request: invalid JSON: {exc}") from None
    try:
        return Request.from_json(obj)
    except RequestError as exc:
        raise UserError(f"--request: {exc}") from None


def run_eval(args: argparse.Namespace) -> int:
    policies = _load(args.policies, args)
    request = _read_request(args.request)
    decision = PolicyEngine(policies).evaluate(request)
    print(json.dumps(decision.to_json()))
    return 0


def _labels(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


def _workloads(policies: PolicySet) -> dict[str, set[Labels]]:
    """Namespaces with policies, and the label sets their selectors (and the root's) name."""
    root = policies.root_namespace
    items: list[AuthorizationPolicy | PeerAuthentication] = [
        *policies.authorization,
        *policies.peer_authentication,
    ]
    namespaces: dict[str, set[Labels]] = {p.namespace: {()} for p in items}
    namespaces.setdefault(root, {()})
    for policy in items:
        if policy.selector is not None:
            targets = (
                namespaces.values() if policy.namespace == root else [namespaces[policy.namespace]]
            )
            for labels in targets:
                labels.add(policy.selector)
    return namespaces


def run_check(args: argparse.Namespace) -> int:
    policies = _load(args.path, args)
    authz, peer = policies.authorization, policies.peer_authentication
    print(
        f"ok: {len(authz)} AuthorizationPolicy, {len(peer)} PeerAuthentication in "
        f"{len(policies.files)} file(s); root namespace {policies.root_namespace}"
    )
    for skipped in policies.skipped:
        print(f"skipped {skipped.origin}: {skipped.api_version} {skipped.kind} (not a policy kind)")
    engine = PolicyEngine(policies)
    mtls = MtlsResolver(policies)
    root = policies.root_namespace
    for namespace, label_sets in sorted(_workloads(policies).items()):
        for labels in sorted(label_sets):
            where = (
                namespace if namespace != root else f"{root} (and any namespace without policies)"
            )
            who = f"workloads labelled {_labels(labels)}" if labels else "all workloads"
            print(f"\n{where}: {who}")
            _print_effective(engine, mtls, namespace, dict(labels))
    for first, shadowed in mtls.conflicts():
        print(
            f"\nwarning: PeerAuthentication {shadowed.key} ({shadowed.origin}) is shadowed by "
            f"{first.key}: Istio uses the oldest policy at each level"
        )
    return 0


def _print_effective(
    engine: PolicyEngine, mtls: MtlsResolver, namespace: str, labels: Mapping[str, str]
) -> None:
    applicable = engine.for_workload(namespace, labels).policies
    if not applicable:
        print("  authorization: no policy, every request is allowed")
    elif not any(p.action == "ALLOW" and not p.dry_run for p in applicable):
        print("  authorization: no ALLOW policy, requests not denied are allowed")
    else:
        print("  authorization: requests are denied unless an ALLOW rule matches")
    for policy in applicable:
        rules = f"{len(policy.rules)} rule" + ("" if len(policy.rules) == 1 else "s")
        if policy.action == "ALLOW" and not policy.rules:
            rules = "no rules: allows nothing"
        note = "  (dry-run: evaluated, not enforced)" if policy.dry_run else ""
        print(f"    {policy.action:<6} {policy.key:<40} {rules}{note}")
    decision = mtls.mode(namespace, labels)
    by = f"{decision.level} policy {decision.policy}" if decision.policy else "Istio default"
    print(f"  mTLS: {decision.mode} ({by}){_ports(mtls, namespace, labels)}")


def _ports(mtls: MtlsResolver, namespace: str, labels: Mapping[str, str]) -> str:
    workload = mtls.mode(namespace, labels)
    ports = _port_numbers(mtls, namespace, labels)
    overrides = [
        f"port {port} {decision.mode}"
        for port in ports
        if (decision := mtls.mode(namespace, labels, port)).mode != workload.mode
        or decision.level == "port"
    ]
    return f"; {', '.join(overrides)}" if overrides else ""


def _port_numbers(mtls: MtlsResolver, namespace: str, labels: Mapping[str, str]) -> Iterable[int]:
    policy = mtls.workload_policy(namespace, labels)
    return [port for port, _ in policy.port_modes] if policy else []
