"""The ECS mapping: every field written checked against ECS's own `ecs_flat.yml`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.events import (
    HTTP,
    TCP,
    TLS,
    AuditEvent,
    Authz,
    DryRun,
    Error,
    Peer,
    Trace,
    canonical_bytes,
    decode_event,
)
from auditmesh.export.ecs import (
    ECS_VERSION,
    ecs_document,
    ecs_fields,
    ecs_line,
    nest,
    timestamp_text,
)
from auditmesh.ledger.merkle import leaf_hash
from tests.conftest import START_NS, generate
from tests.export.ecs_schema import EcsSchema

EVENT_ID = "019ac879-8b02-7cc7-b636-d85099090016"
CALLER = "spiffe://cluster.local/ns/shop/sa/frontend"
CALLEE = "spiffe://cluster.local/ns/shop/sa/orders"


@pytest.fixture(scope="module")
def schema() -> EcsSchema:
    return EcsSchema.load_or_skip()


def fields_of(event: AuditEvent, index: int = 0) -> dict[str, Any]:
    data = canonical_bytes(event)
    return ecs_fields(event, index=index, leaf=leaf_hash(data), original=data)


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def event(**changes: Any) -> AuditEvent:
    base: dict[str, Any] = {
        "id": EVENT_ID,
        "time_ns": START_NS,
        "reporter": CALLEE,
        "kind": "http",
        "outcome": "success",
    }
    return AuditEvent(**{**base, **changes})


def peer(identity: str, **changes: Any) -> Peer:
    return Peer(identity=identity, **changes)


EDGE_CASES: dict[str, AuditEvent] = {
    "minimal": event(),
    "denied": event(
        outcome="failure",
        direction="inbound",
        source=peer(CALLER, service="frontend", namespace="shop", ip="10.0.0.10", port=40000),
        destination=peer(CALLEE, service="orders", ip="10.0.0.12", port=8080, host="orders"),
        http=HTTP(method="POST", path="/orders", status=403, response_bytes=0),
        authz=Authz(decision="deny", policy="shop/deny-frontend"),
        error=Error(type="rbac_access_denied", message="RBAC: access denied"),
    ),
    "error_5xx_outbound_h2": event(
        outcome="failure",
        direction="outbound",
        reporter=CALLER,
        source=peer(CALLER, ip="fd00::10", port=50000),
        destination=peer(CALLEE, ip="fd00::12", port=8443, host="[fd00::12]:8443"),
        tls=TLS(mutual=True, version="TLSv1.2", peer_cert_sha256="ab" * 32, peer_not_after=1),
        http=HTTP(method="get", path="/orders/7?expand=items&x=", status=503, protocol="h2"),
        authz=Authz(
            decision="allow",
            policy="shop/orders",
            rule=2,
            dry_run=DryRun(decision="deny", policy="shop/strict"),
        ),
        error=Error(type="upstream_error", message="HTTP 503"),
        trace=Trace(trace_id="1" * 32, span_id="2" * 16, parent_span_id="3" * 16),
    ),
    "tcp": event(
        kind="tcp",
        direction="inbound",
        duration_us=1_500_000,
        source=peer(CALLER, ip="10.0.0.10", port=41000),
        destination=peer(CALLEE, ip="10.0.0.12", port=5432, host="orders-db.shop:5432"),
        tls=TLS(mutual=True, version="TLSv1.3"),
        tcp=TCP(sent_bytes=1200, received_bytes=88_000, end="downstream_close"),
        authz=Authz(decision="allow", policy="shop/db", rule=0),
    ),
    "tcp_denied": event(
        kind="tcp",
        outcome="failure",
        source=peer(CALLER),
        destination=peer(CALLEE, port=5432),
        tcp=TCP(),
        authz=Authz(decision="deny", policy="shop/db"),
    ),
    "authn_failed": event(
        kind="authn",
        outcome="failure",
        direction="inbound",
        source=Peer(ip="192.0.2.7", port=51000),
        destination=peer(CALLEE, ip="10.0.0.12", port=8080),
        tls=TLS(mutual=False, version="TLSv1.3"),
        error=Error(type="peer_certificate_missing", message="no client certificate"),
    ),
    "policy_change": event(
        kind="policy_change", reporter="auditmesh-server", labels={"policy": "shop/orders"}
    ),
    "identity": event(kind="identity", outcome="success", reporter="ca:cluster.local"),
    "audit_read": event(kind="audit_read", outcome="success", reporter="api:127.0.0.1"),
    "system": event(kind="system", outcome="unknown", reporter="auditmesh-server"),
    "odd_addresses": event(
        source=Peer(ip="not-an-ip", port=0),
        destination=Peer(ip="fe80::1%eth0", host="10.0.0.12:8080"),
        tls=TLS(version="QUIC"),
        http=HTTP(protocol="SPDY/3"),
        labels={
            "app.kubernetes.io/name": "orders",
            "app_kubernetes_io/name": "kept",
            "team": "payments",
        },
        attested=True,
    ),
}


def test_generated_traffic_conforms_to_ecs(schema: EcsSchema) -> None:
    for index, generated in enumerate(generate(500)):
        flat = fields_of(generated, index)
        assert schema.problems(flat) == [], generated.id


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_conform_to_ecs(schema: EcsSchema, name: str) -> None:
    assert schema.problems(fields_of(EDGE_CASES[name], 3)) == []


def test_the_checker_catches_what_elasticsearch_would_refuse(schema: EcsSchema) -> None:
    """The checker itself: wrong names, types, allowed values and pairings are reported."""
    good = fields_of(EDGE_CASES["denied"])
    for bad, expected in (
        ({"event.kind": "audit"}, "allowed values"),
        ({"event.outcome": "denied"}, "allowed values"),
        ({"event.category": ["network", "audit"]}, "allowed values"),
        ({"event.type": ["access", "change"]}, "not expected"),
        ({"source.ip": "10.0.0.300"}, "not a valid ECS ip"),
        ({"event.duration": "12"}, "not a valid ECS long"),
        ({"event.sequence": True}, "not a valid ECS long"),
        ({"@timestamp": "yesterday"}, "not a valid ECS date"),
        ({"service.origin.namespace": "shop"}, "not an ECS field"),
        ({"labels.a.b": "x"}, "must not contain a dot"),
        ({"labels.n": 3}, "not a valid ECS keyword"),
        ({"url.path": ["/a"]}, "array"),
        ({"error.type": None}, "null"),
    ):
        problems = schema.problems({**good, **bad})
        assert any(expected in p for p in problems), (bad, problems)


def test_fields_carry_the_event() -> None:
    generated = generate(50)
    denied = next(e for e in generate(500) if e.authz and e.authz.decision == "deny")
    data = canonical_bytes(denied)
    flat = flatten(msgspec.json.decode(ecs_line(41, data, preserve_original=True)))
    assert flat["event.hash"] == leaf_hash(data).hex()
    assert flat["event.sequence"] == 41
    assert flat["event.id"] == denied.id
    assert flat["event.original"].encode() == data  # anyone can recompute event.hash
    assert flat["event.outcome"] == "failure"
    assert flat["event.category"] == ["network", "web"]
    assert flat["event.type"] == ["access", "denied"]
    assert flat["event.duration"] == denied.duration_us * 1000
    assert flat["event.dataset"] == "auditmesh.audit"
    assert flat["ecs.version"] == ECS_VERSION
    assert denied.source is not None and denied.destination is not None
    assert flat["source.ip"] == flat["source.address"] == denied.source.ip
    assert flat["destination.domain"] == denied.destination.host
    assert flat["service.origin.name"] == "batch-report"
    assert flat["service.target.name"] == "payments"
    assert flat["tls.client.x509.alternative_names"] == [denied.source.identity]
    assert denied.tls is not None and denied.tls.peer_cert_sha256 is not None
    assert flat["tls.client.hash.sha256"] == denied.tls.peer_cert_sha256.upper()
    assert (flat["tls.version"], flat["tls.version_protocol"]) == ("1.3", "tls")
    assert flat["rule.ruleset"] == flat["rule.name"] == "shop/payments-only"
    assert flat["error.type"] == "rbac_access_denied"
    assert flat["http.response.status_code"] == 403
    assert flat["network.direction"] == "ingress"
    assert flat["tags"] == ["reported", "authz-deny"]
    assert denied.trace is not None
    assert (flat["trace.id"], flat["span.id"]) == (denied.trace.trace_id, denied.trace.span_id)
    allowed = fields_of(generated[0])
    assert allowed["event.type"] == ["access", "allowed"]
    assert allowed["rule.name"] == "shop/catalog-allow/rules/0"
    assert allowed["labels.app"] == "catalog"


def test_edge_case_mappings() -> None:
    outbound = fields_of(EDGE_CASES["error_5xx_outbound_h2"])
    assert outbound["event.type"] == ["access", "allowed", "error"]
    assert outbound["network.direction"] == "egress"
    assert outbound["tls.server.hash.sha256"] == "AB" * 32  # the peer of an outbound call
    assert "tls.client.hash.sha256" not in outbound
    assert outbound["tls.server.not_after"] == "1970-01-01T00:00:01.000Z"
    assert (outbound["tls.version"], outbound["http.version"]) == ("1.2", "2")
    assert outbound["url.path"] == "/orders/7"
    assert outbound["url.query"] == "expand=items&x="
    assert outbound["http.request.method"] == "get"  # ECS: keep the original casing
    assert outbound["destination.ip"] == "fd00::12"
    assert outbound["destination.address"] == "fd00::12"
    assert "destination.domain" not in outbound
    assert outbound["network.type"] == "ipv6"
    assert outbound["tags"] == ["reported", "authz-allow", "dry-run-deny"]
    assert outbound["rule.id"] == "2"

    tcp = fields_of(EDGE_CASES["tcp"])
    assert tcp["event.category"] == ["network"]
    assert tcp["event.type"] == ["connection", "allowed", "end"]
    assert tcp["network.bytes"] == 89_200
    assert tcp["event.reason"] == "downstream_close"
    assert tcp["destination.domain"] == "orders-db.shop"
    assert tcp["event.duration"] == 1_500_000_000
    assert "network.protocol" not in tcp

    authn = fields_of(EDGE_CASES["authn_failed"])
    assert (authn["event.category"], authn["event.type"]) == (["authentication"], ["info"])
    assert authn["event.outcome"] == "failure"
    assert "tls.client.x509.alternative_names" not in authn

    odd = fields_of(EDGE_CASES["odd_addresses"])
    assert odd["source.address"] == "not-an-ip" and "source.ip" not in odd
    assert odd["destination.address"] == "fe80::1%eth0"
    assert odd["destination.ip"] == "10.0.0.12"  # the authority was an IP literal
    assert "tls.version" not in odd and "http.version" not in odd
    assert odd["labels.app_kubernetes_io/name"] == "kept"
    assert odd["labels.team"] == "payments"
    assert odd["tags"] == ["attested"]

    minimal = fields_of(EDGE_CASES["minimal"])
    assert minimal["@timestamp"] == "2025-11-28T03:20:00.000000000Z"
    assert not any(name.startswith(("source.", "http.", "tls.")) for name in minimal)


def test_document_is_the_nested_form_of_the_fields() -> None:
    for case in EDGE_CASES.values():
        data = canonical_bytes(case)
        flat = ecs_fields(case, index=9, leaf=leaf_hash(data))
        assert flatten(ecs_document(case, index=9, leaf=leaf_hash(data))) == flat
        assert msgspec.json.decode(ecs_line(9, data)) == ecs_document(
            case, index=9, leaf=leaf_hash(data)
        )


def test_nest_handles_groups_that_come_back_and_deeper_names() -> None:
    fields = {"a.b": 1, "c": 2, "a.d": 3, "a.e.f": 4, "a.e.g": 5, "x.y.z": 6, "a.h": 7}
    assert nest(fields) == {
        "a": {"b": 1, "d": 3, "e": {"f": 4, "g": 5}, "h": 7},
        "c": 2,
        "x": {"y": {"z": 6}},
    }


def test_timestamp_keeps_nanoseconds() -> None:
    assert timestamp_text(1_764_300_000_002_358_253) == "2025-11-28T03:20:00.002358253Z"
    assert timestamp_text(0) == "1970-01-01T00:00:00.000000000Z"
    assert timestamp_text(2**63 - 1) == "2262-04-11T23:47:16.854775807Z"
    parsed = datetime.fromisoformat(timestamp_text(START_NS + 123_456_000)[:-4] + "+00:00")
    assert int(parsed.timestamp()) * 10**9 + parsed.microsecond * 1000 == START_NS + 123_456_000


_text = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    ip=st.one_of(st.none(), _text, st.ip_addresses().map(str)),
    host=st.one_of(st.none(), _text.filter(lambda t: 0 < len(t) <= 253)),
    protocol=st.one_of(st.none(), st.text(max_size=16)),
    tls_version=st.one_of(st.none(), st.text(max_size=16)),
    path=st.one_of(st.none(), _text),
    labels=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,10}[A-Za-z0-9])?", fullmatch=True),
        st.text(max_size=20),
        max_size=4,
    ),
    direction=st.sampled_from([None, "inbound", "outbound"]),
    kind=st.sampled_from(["http", "tcp", "authn", "identity", "policy_change", "system"]),
)
def test_any_valid_event_maps_to_valid_ecs(
    ip: str | None,
    host: str | None,
    protocol: str | None,
    tls_version: str | None,
    path: str | None,
    labels: dict[str, str],
    direction: str | None,
    kind: str,
) -> None:
    schema = EcsSchema.load_or_skip()
    raw = msgspec.json.encode(
        {
            "id": EVENT_ID,
            "time_ns": str(START_NS),
            "reporter": CALLEE,
            "kind": kind,
            "outcome": "unknown",
            **({"direction": direction} if direction else {}),
            "source": {k: v for k, v in (("ip", ip), ("port", 1)) if v is not None},
            "destination": {k: v for k, v in (("host", host), ("ip", ip)) if v is not None},
            "tls": {k: v for k, v in (("version", tls_version),) if v is not None},
            "http": {k: v for k, v in (("protocol", protocol), ("path", path)) if v is not None},
            "labels": labels,
        }
    )
    try:
        parsed = decode_event(raw)
    except ValueError:
        return  # outside the event model (too long, …): the collector refuses it anyway
    assert schema.problems(fields_of(parsed)) == []
