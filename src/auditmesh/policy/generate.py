"""Least-privilege ALLOW policies from observed traffic (auditmesh.policy.generate).

Place in the house: a reader of the ledger, like :mod:`auditmesh.policy.replay`, whose
:class:`~auditmesh.policy.replay.Call` it takes as input. Pure: calls in, Istio YAML text out;
``auditmesh policy generate`` (:mod:`auditmesh.cli.policy`) reads the ledger and writes the file.

One ``security.istio.io/v1`` AuthorizationPolicy, action ALLOW, per destination workload, in the
workload's namespace, selecting it by its ``app`` label (all its labels when it has no ``app``).
Its rules allow what was observed allowed and little more:

- each caller by its identity: ``principals`` (the SPIFFE ID without ``spiffe://``, as Istio
  writes them), ``ipBlocks`` with its single address for a caller without one, no ``from`` when
  neither is known;
- for each method the paths it was seen with (Istio's path matching ignores the query, so do
  we). A path with an id-like segment (digits, a UUID, 8+ hex digits) becomes ``prefix/*``
  (Istio prefix match) up to that segment; more than ``max_paths`` distinct paths under one
  directory become ``dir/*``; patterns covered by another are dropped;
- ``ports`` only when the workload was seen on several ports (and every call recorded one);
- callers with the same operations share a rule. TCP connections get rules of their own:
  Istio ignores an ALLOW rule with HTTP-only fields (methods, paths, hosts, headers) for TCP
  traffic (Istio task "Authorization for TCP traffic", istio.io/latest/docs/tasks/security/
  authorization/authz-tcp/), so a shared rule would deny the connections.

A workload seen only with denied calls gets an ALLOW policy without rules: the allow-nothing
policy of the AuthorizationPolicy reference (ALLOW policies present and none matching → deny).
Replaying the output over the calls it came from denies none that was allowed (tested as a
property). Output is sorted: the same calls in any order give the same text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import yaml

from auditmesh.policy.model import ROOT_NAMESPACE
from auditmesh.policy.replay import Call, Workloads, workload_labels

API_VERSION = "security.istio.io/v1"
DEFAULT_MAX_PATHS = 8
NAME_SUFFIX = "-allow-observed"

# Path segments that identify one resource rather than name an endpoint.
_ID_SEGMENT = re.compile(
    r"[0-9]+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[a-fA-F]*[0-9])[0-9a-fA-F]{8,}"
)
# Characters that make an Istio path value something other than an exact match: a leading or
# trailing "*" (suffix/prefix match, reference "Rule"), "{" "}" (path templates, "Operation").
_SPECIAL = re.compile(r"[*{}]")


def is_id_segment(segment: str) -> bool:
    return _ID_SEGMENT.fullmatch(segment) is not None


def path_pattern(path: str) -> str:
    """One observed path → the pattern that allows it: exact, or ``prefix/*`` cut at the first
    id-like segment (the first segment itself is never cut: ``/*`` would allow every path)."""
    special = _SPECIAL.search(path)
    if special is not None:
        # No escaping exists for these in Istio: allow the literal text before them as a prefix.
        return path[: special.start()] + "*"
    segments = path.split("/")
    for index in range(2, len(segments)):
        if is_id_segment(segments[index]):
            return "/".join(segments[:index]) + "/*"
    return path


def covers(pattern: str, other: str) -> bool:
    """Does Istio pattern ``pattern`` (exact or ``prefix*``) match all that ``other`` does?"""
    if pattern == other:
        return True
    if pattern == "*":
        return True
    if not pattern.endswith("*"):
        return False
    prefix = pattern[:-1]
    return other.startswith(prefix)  # other exact, or other's prefix extends this one


def minimal(patterns: Iterable[str]) -> tuple[str, ...]:
    """Sorted patterns without those another one covers."""
    unique = sorted(set(patterns))
    return tuple(p for p in unique if not any(q != p and covers(q, p) for q in unique))


def collapse_paths(paths: Iterable[str], max_paths: int = DEFAULT_MAX_PATHS) -> dict[str, str]:
    """Observed path → pattern, for all the paths of one workload.

    Id-like segments first (:func:`path_pattern`); then, repeatedly, a directory below the
    root holding more than ``max_paths`` distinct patterns is replaced by ``dir/*``.
    """
    mapping = {path: path_pattern(path) for path in set(paths)}
    while True:
        by_dir: dict[str, set[str]] = {}
        for pattern in minimal(mapping.values()):
            directory = _directory(pattern)
            if directory is not None:
                by_dir.setdefault(directory, set()).add(pattern)
        crowded = sorted(d for d, members in by_dir.items() if len(members) > max_paths)
        if not crowded:
            return mapping
        # The deepest crowded directory first; its parent is counted again next round.
        directory = max(crowded, key=len)
        for path, pattern in mapping.items():
            if covers(directory + "*", pattern):
                mapping[path] = directory + "*"


def _directory(pattern: str) -> str | None:
    """The directory (ending in ``/``) a pattern sits in, None at or above the root."""
    body = pattern[:-2] if pattern.endswith("/*") else pattern
    if not body.startswith("/") or body.endswith("*"):
        return None
    directory = body[: body.rindex("/") + 1]
    return None if directory == "/" else directory


@dataclass(frozen=True, slots=True)
class Window:
    """What the policies were generated from, for the header comment."""

    description: str  # e.g. "--since 24h: 2025-11-28T03:20:00Z .. 2025-11-29T03:20:00Z"
    source: str = ""  # e.g. "ledger auditmesh.local/host in ./auditmesh-data"


Caller = tuple[str, str]  # ("principal", p) | ("ip", address) | ("any", "")
Op = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # ports, methods, paths
ANY_PATH = ""  # in a path set: this method was seen without a path, allow any


@dataclass(slots=True)
class _Workload:
    namespace: str
    service: str
    allowed: list[Call] = field(default_factory=list)
    denied: int = 0


def generate_policies(
    calls: Iterable[Call],
    window: Window,
    *,
    workloads: Workloads | None = None,
    namespace: str | None = None,
    max_paths: int = DEFAULT_MAX_PATHS,
    root_namespace: str = ROOT_NAMESPACE,
) -> str:
    """The YAML text: a header comment, then one document per destination workload."""
    seen: dict[tuple[str, str], _Workload] = {}
    unnamed = 0
    for call in calls:
        if namespace is not None and call.namespace != namespace:
            continue
        if call.service is None:
            unnamed += call.recorded == "allow"
            continue
        key = (call.namespace, call.service)
        workload = seen.setdefault(key, _Workload(call.namespace, call.service))
        if call.recorded == "allow":
            workload.allowed.append(call)
        else:
            workload.denied += 1
    labels_of = workloads or {}
    names: set[tuple[str, str]] = set()
    documents = []
    for key in sorted(seen):
        workload = seen[key]
        labels = workload_labels(workload.namespace, workload.service, labels_of)
        name = _unique_name(workload.namespace, workload.service, names)
        documents.append(_document(workload, labels, name, max_paths, root_namespace))
    allowed = sum(len(w.allowed) for w in seen.values())
    header = [
        "Least-privilege ALLOW policies generated by `auditmesh policy generate` from the",
        "inbound calls the audit ledger recorded as allowed.",
        f"Window: {window.description}",
        *([f"Source: {window.source}"] if window.source else []),
        f"Observed: {_count(allowed, 'allowed call')} to {_count(len(seen), 'workload')}"
        + (f" in namespace {namespace}" if namespace is not None else ""),
        "Workload labels: from --workloads where given, else {app: <service>}.",
        "Review before applying; try them first: auditmesh policy replay --policies FILE.",
    ]
    if unnamed:
        header.append(
            f"Left out: {unnamed} allowed calls to workloads the events do not name "
            "(no destination service)."
        )
    text = "".join(f"# {_comment(line)}\n" for line in header)
    return text + "".join(f"---\n{doc}" for doc in documents)


def _document(
    workload: _Workload, labels: Mapping[str, str], name: str, max_paths: int, root_ns: str
) -> str:
    selector = {"app": labels["app"]} if "app" in labels else dict(sorted(labels.items()))
    spec: dict[str, object] = {"selector": {"matchLabels": selector}, "action": "ALLOW"}
    rules = _rules(workload.allowed, max_paths)
    if rules:
        spec["rules"] = rules
    policy = {
        "apiVersion": API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": workload.namespace},
        "spec": spec,
    }
    where = f"{workload.namespace}/{workload.service}"
    callers = len({_caller(c) for c in workload.allowed})
    if rules:
        notes = [
            f"{where}: {_count(len(workload.allowed), 'allowed call')} from "
            f"{_count(callers, 'caller')}"
        ]
    else:
        notes = [f"{where}: no allowed call, {_count(workload.denied, 'denied')}: allow nothing"]
    if workload.namespace == root_ns:
        # Istio: a policy in the root namespace applies to matching workloads in every namespace.
        notes.append(f"note: {root_ns} is the root namespace; this policy applies mesh-wide")
    body = yaml.safe_dump(policy, sort_keys=False, default_flow_style=False, width=1 << 16)
    return "".join(f"# {_comment(n)}\n" for n in notes) + body


def _caller(call: Call) -> Caller:
    request = call.request
    if request.source_principal is not None:
        return ("principal", request.source_principal)
    if request.source_ip is not None:
        # Istio ipBlocks take a single address; drop an IPv6 zone, which they cannot express.
        address = request.source_ip
        plain = type(address)(int(address))
        return ("ip", str(plain))
    return ("any", "")


def _rules(calls: list[Call], max_paths: int) -> list[dict[str, object]]:
    ports = {c.request.destination_port for c in calls}
    use_ports = None not in ports and len(ports) > 1
    paths = collapse_paths(
        (c.request.path for c in calls if c.request.http and c.request.path), max_paths
    )
    # caller → (port, method) → path patterns, HTTP and TCP apart (Istio drops an ALLOW rule
    # with HTTP fields from TCP evaluation, so the two never share a rule).
    http_ops: dict[Caller, dict[tuple[str | None, str | None], set[str]]] = {}
    tcp_ops: dict[Caller, set[str | None]] = {}
    for call in calls:
        request = call.request
        caller = _caller(call)
        port = str(request.destination_port) if use_ports else None
        if request.http and (request.method or request.path):
            by_op = http_ops.setdefault(caller, {})
            pattern = paths[request.path] if request.path else ANY_PATH
            by_op.setdefault((port, request.method), set()).add(pattern)
        else:
            tcp_ops.setdefault(caller, set()).add(port)
    grants: dict[tuple[Op, ...], set[Caller]] = {}
    for caller, port_set in tcp_ops.items():
        plain: tuple[Op, ...] = (
            () if None in port_set else ((tuple(sorted(p for p in port_set if p)), (), ()),)
        )
        grants.setdefault(plain, set()).add(caller)
        if not plain:
            http_ops.pop(caller, None)  # allowed anything already
    for caller, by_op in http_ops.items():
        grants.setdefault(_operations(by_op), set()).add(caller)
    rules = [_rule(callers, ops) for ops, callers in grants.items()]
    rules.sort(key=lambda rule: json.dumps(rule, sort_keys=True))
    return rules


def _operations(by_op: dict[tuple[str | None, str | None], set[str]]) -> tuple[Op, ...]:
    """(port, method) → paths, merged where the cross product stays what was seen."""
    # Same port and paths: one operation for several methods (methods × paths is exact).
    merged: dict[tuple[str | None, tuple[str, ...], bool], set[str]] = {}
    for (port, method), patterns in by_op.items():
        paths = () if ANY_PATH in patterns else minimal(patterns)
        merged.setdefault((port, paths, method is None), set()).add(method or "")
    # Same methods and paths: one operation for several ports.
    by_shape: dict[tuple[tuple[str, ...], tuple[str, ...]], set[str]] = {}
    for (port, paths, anymethod), methods in merged.items():
        shape = (() if anymethod else tuple(sorted(methods)), paths)
        by_shape.setdefault(shape, set()).add(port or "")
    ops: list[Op] = []
    for (method_list, paths), port_set in by_shape.items():
        port_list = () if "" in port_set else tuple(sorted(port_set, key=int))
        ops.append((port_list, method_list, paths))
    return tuple(sorted(ops))


def _rule(callers: set[Caller], ops: tuple[Op, ...]) -> dict[str, object]:
    rule: dict[str, object] = {}
    if not any(kind == "any" for kind, _ in callers):
        sources = []
        principals = sorted(value for kind, value in callers if kind == "principal")
        if principals:
            sources.append({"source": {"principals": principals}})
        addresses = sorted(value for kind, value in callers if kind == "ip")
        if addresses:
            sources.append({"source": {"ipBlocks": addresses}})
        rule["from"] = sources
    operations = []
    for ports, methods, paths in ops:
        operation: dict[str, list[str]] = {}
        if ports:
            operation["ports"] = list(ports)
        if methods:
            operation["methods"] = list(methods)
        if paths:
            operation["paths"] = list(paths)
        if not operation:
            break  # an operation that matches anything: no `to` at all
        operations.append({"operation": operation})
    else:
        if operations:
            rule["to"] = operations
    return rule


def _unique_name(namespace: str, service: str, used: set[tuple[str, str]]) -> str:
    """A Kubernetes object name (RFC 1123 subdomain) unique in the namespace."""
    slug = re.sub(r"[^a-z0-9.-]+", "-", service.lower()).strip("-.") or "workload"
    base = slug[: 253 - len(NAME_SUFFIX) - 8] + NAME_SUFFIX
    name, number = base, 1
    while (namespace, name) in used:
        number += 1
        name = f"{base}-{number}"
    used.add((namespace, name))
    return name


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 or noun == "denied" else "s")


def _comment(text: str) -> str:
    """Text safe on one YAML comment line (names come from events: no control characters)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
