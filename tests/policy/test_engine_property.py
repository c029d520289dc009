"""The compiled engine agrees with a naive interpreter of Istio's rules on random policy sets.

The interpreter below is written straight from the Istio AuthorizationPolicy reference (steps
1–5, "Rule", "Source", "Operation", conditions, the TCP note) with no compilation, so any
disagreement is a bug in auditmesh.policy.compiler/engine.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.policy.documents import Origin
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.model import AuthorizationPolicy
from auditmesh.policy.request import Request
from auditmesh.policy.rules import Condition, Operation, Rule, Source

PRINCIPALS = [
    "cluster.local/ns/a/sa/x",
    "cluster.local/ns/a/*",
    "*/sa/x",
    "*",
    "cluster.local/ns/b/sa/y",
]
NAMESPACES = ["a", "b", "a*", "*", "team-*-east"]
IPS = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.1", "::1"]
HOSTS = ["example.com", "*.example.com", "API.*", "*"]
PORTS = ["80", "8080"]
METHODS = ["GET", "POST", "P*"]
PATHS = ["/a", "/a/*", "*/x", "/t/{*}", "/t/{**}", "*"]
SNIS = ["s.example.com", "*.example.com"]
HEADERS = ["v", "v*", "*"]
WHEN = {
    "source.ip": IPS,
    "source.namespace": NAMESPACES,
    "source.principal": PRINCIPALS,
    "destination.ip": IPS,
    "destination.port": PORTS,
    "connection.sni": SNIS,
    "request.headers[X-H]": HEADERS,
}


def some(values: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(values), max_size=2, unique=True).map(tuple)


UNIVERSE = {
    "principals": PRINCIPALS,
    "not_principals": PRINCIPALS,
    "namespaces": NAMESPACES,
    "not_namespaces": NAMESPACES,
    "ip_blocks": IPS,
    "not_ip_blocks": IPS,
    "hosts": HOSTS,
    "not_hosts": HOSTS,
    "ports": PORTS,
    "not_ports": PORTS,
    "methods": METHODS,
    "not_methods": METHODS,
    "paths": PATHS,
    "not_paths": PATHS,
}


def fields_of(cls: type[Source] | type[Operation]) -> st.SearchStrategy[Any]:
    """A Source or Operation with one or two fields set, so that rules often match."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        names = draw(st.lists(st.sampled_from(cls.__slots__), min_size=1, max_size=2, unique=True))
        return cls(
            **{
                n: tuple(
                    draw(
                        st.lists(st.sampled_from(UNIVERSE[n]), min_size=1, max_size=2, unique=True)
                    )
                )
                for n in names
            }
        )

    return build()


sources = fields_of(Source)
operations = fields_of(Operation)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    key = draw(st.sampled_from(sorted(WHEN)))
    values, nots = draw(some(WHEN[key])), draw(some(WHEN[key]))
    if not values and not nots:
        values = (WHEN[key][0],)
    header = "x-h" if key.startswith("request.headers") else None
    return Condition(key, values, nots, header)


rules = st.builds(
    Rule,
    st.lists(sources, max_size=2).map(tuple),
    st.lists(operations, max_size=2).map(tuple),
    st.lists(conditions(), max_size=2).map(tuple),
)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[AuthorizationPolicy]:
    count = draw(st.integers(1, 4))
    return [
        AuthorizationPolicy(
            "ns",
            f"p{i}",
            draw(st.sampled_from(["ALLOW", "DENY", "AUDIT"])),
            None,
            tuple(draw(st.lists(rules, max_size=3))),
            draw(st.booleans().map(lambda b: b and draw(st.integers(0, 3)) == 0)),
            Origin("generated", i + 1),
        )
        for i in range(count)
    ]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    http = draw(st.booleans())

    def pick(values: list[Any]) -> Any:
        return draw(st.sampled_from(values))

    header = pick([None, "v", "vv", "w", ""])
    return Request.of(
        destination_namespace="ns",
        source_principal=pick(
            [
                None,
                "spiffe://cluster.local/ns/a/sa/x",
                "cluster.local/ns/a/sa/z",
                "spiffe://cluster.local/ns/b/sa/y",
                "spiffe://cluster.local/ns/team-a-east/sa/y",
                "spiffe://example.org/ns/a/sa/x/extra",
                "spiffe://example.org/job/7",
            ]
        ),
        source_ip=pick([None, "10.1.2.3", "10.9.9.9", "192.0.2.1", "::1"]),
        destination_ip=pick([None, "10.1.0.1", "192.0.2.1"]),
        destination_port=pick([None, 80, 8080, 9090]),
        http=http,
        method=pick([None, "GET", "POST", "PUT"]) if http else None,
        path=pick([None, "/a", "/a/b", "/b/x", "/t/1", "/t/1/2", ""]) if http else None,
        host=pick([None, "example.com", "api.example.com", "EXAMPLE.COM", "other", ""])
        if http
        else None,
        headers={"X-H": header} if http and header is not None else None,
        sni=pick([None, "s.example.com", "t.example.com"]),
    )


# ---- the reference interpreter ---------------------------------------------------------------


def ref_strings(patterns: tuple[str, ...], value: str | None, ignore_case: bool = False) -> bool:
    if value is None:
        return False
    for pattern in patterns:
        v, p = (value.lower(), pattern.lower()) if ignore_case else (value, pattern)
        if "{*}" in p or "{**}" in p:
            regex = re.escape(p).replace(r"\{\*\*\}", ".*").replace(r"\{\*\}", "[^/]+")
            ok = re.fullmatch(regex, v) is not None
        elif p == "*":
            ok = v != ""
        elif p.startswith("*"):
            ok = v.endswith(p[1:])
        elif p.endswith("*"):
            ok = v.startswith(p[:-1])
        else:
            ok = v == p
        if ok:
            return True
    return False


def ref_hosts(patterns: tuple[str, ...], value: str | None) -> bool:
    """Case-insensitive; "*" is Envoy's present_match (Istio HostMatcher): an empty Host too."""
    if "*" in patterns:
        return value is not None
    return ref_strings(patterns, value, True)


def ref_ips(blocks: tuple[str, ...], value: Any) -> bool:
    return value is not None and any(
        value.version == ipaddress.ip_network(b, strict=False).version
        and value in ipaddress.ip_network(b, strict=False)
        for b in blocks
    )


def ref_namespaces(patterns: tuple[str, ...], principal: str | None) -> bool:
    """Istio srcNamespaceGenerator, as its Go code reads: regex `.*/ns/NS/.*`, `*` -> `.*`."""
    if principal is None:
        return False
    regexes = [".*/ns/" + re.escape(p).replace(r"\*", ".*") + "/.*" for p in patterns]
    return any(re.fullmatch(regex, "spiffe://" + principal) for regex in regexes)


def ref_header(patterns: tuple[str, ...], value: str | None) -> bool:
    """Envoy present_match for `*`: there, empty or not."""
    return value is not None and ("*" in patterns or ref_strings(patterns, value))


def ref_ports(ports: tuple[str, ...], value: int | None) -> bool:
    return value is not None and str(value) in ports


def field(match: Any, values: tuple[str, ...], nots: tuple[str, ...], value: Any) -> bool:
    return (not values or match(values, value)) and (not nots or not match(nots, value))


HTTP_KEYS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")


def ref_rule(rule: Rule, action: str, r: Request) -> bool:
    uses_http = any(getattr(o, k) for o in rule.operations for k in HTTP_KEYS) or any(
        c.header for c in rule.conditions
    )
    if not r.http and uses_http and action == "ALLOW":
        return False  # Istio: the rule is not generated for the TCP filter
    tcp = not r.http

    def source_ok(s: Source) -> bool:
        return (
            field(ref_strings, s.principals, s.not_principals, r.source_principal)
            and field(ref_namespaces, s.namespaces, s.not_namespaces, r.source_principal)
            and field(ref_ips, s.ip_blocks, s.not_ip_blocks, r.source_ip)
        )

    def operation_ok(o: Operation) -> bool:
        http_part = tcp or (
            field(ref_hosts, o.hosts, o.not_hosts, r.host)
            and field(ref_strings, o.methods, o.not_methods, r.method)
            and field(ref_strings, o.paths, o.not_paths, r.path)
        )
        return http_part and field(ref_ports, o.ports, o.not_ports, r.destination_port)

    def condition_ok(c: Condition) -> bool:
        if c.header:
            return tcp or field(ref_header, c.values, c.not_values, r.headers.get(c.header))
        value, match = {
            "source.ip": (r.source_ip, ref_ips),
            "source.namespace": (r.source_principal, ref_namespaces),
            "source.principal": (r.source_principal, ref_strings),
            "destination.ip": (r.destination_ip, ref_ips),
            "destination.port": (r.destination_port, ref_ports),
            "connection.sni": (r.sni, ref_strings),
        }[c.key]
        return field(match, c.values, c.not_values, value)

    return (
        (not rule.sources or any(source_ok(s) for s in rule.sources))
        and (not rule.operations or any(operation_ok(o) for o in rule.operations))
        and all(condition_ok(c) for c in rule.conditions)
    )


def ref_first(
    policies: list[AuthorizationPolicy], action: str, r: Request
) -> tuple[str, int] | None:
    for p in sorted(policies, key=lambda p: p.name):
        if p.action == action:
            for i, rule in enumerate(p.rules):
                if ref_rule(rule, action, r):
                    return p.key, i
    return None


def ref_decide(policies: list[AuthorizationPolicy], r: Request) -> dict[str, Any]:
    if hit := ref_first(policies, "DENY", r):
        return {"decision": "deny", "policy": hit[0], "rule": hit[1]}
    if not any(p.action == "ALLOW" for p in policies):
        return {"decision": "allow", "policy": None, "rule": None}
    if hit := ref_first(policies, "ALLOW", r):
        return {"decision": "allow", "policy": hit[0], "rule": hit[1]}
    return {"decision": "deny", "policy": None, "rule": None}


def reference(policies: list[AuthorizationPolicy], r: Request) -> dict[str, Any]:
    enforced = [p for p in policies if not p.dry_run]
    result = ref_decide(enforced, r)
    audit = ref_first(enforced, "AUDIT", r)
    result["audit"] = audit is not None
    result["dry_run"] = ref_decide(policies, r) if len(enforced) < len(policies) else None
    result["audit_policy"] = audit and audit[0]
    return result


@settings(max_examples=300, deadline=None)
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=6))
def test_engine_agrees_with_reference(
    policies: list[AuthorizationPolicy], batch: list[Request]
) -> None:
    engine = PolicyEngine(policies)
    for request in batch:
        decision = engine.evaluate(request)
        got = decision.to_json() | {"audit_policy": decision.audit_policy}
        assert got == reference(policies, request), request


@given(st.sampled_from(PRINCIPALS), st.sampled_from([None, "cluster.local/ns/a/sa/x", "x", ""]))
def test_not_values_are_the_complement(pattern: str, principal: str | None) -> None:
    def allowed(source: Source) -> bool:
        policy = AuthorizationPolicy(
            "ns", "p", "ALLOW", None, (Rule((source,)),), False, Origin("t", 1)
        )
        request = Request.of(destination_namespace="ns", source_principal=principal)
        return PolicyEngine([policy]).evaluate(request).allowed

    assert allowed(Source(principals=(pattern,))) != allowed(Source(not_principals=(pattern,)))
