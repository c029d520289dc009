"""AuditEvent -> Elastic Common Schema (ECS) document: a pure mapping, no I/O.

Place in the house: an exporter, reading committed ledger entries (`auditmesh export ecs`
drives it). One ledger entry becomes one JSON object, one line of NDJSON that Filebeat's
`ndjson` parser or Elastic Agent ships as is. Field names, types and allowed values follow
ECS (https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html); the tests check
every written field against ECS's own `ecs_flat.yml`.

`ecs_fields` gives the flat field map (dotted names, as the ECS reference lists them);
`ecs_document` nests it into objects, the form Elasticsearch and Filebeat expect. Fields the
event does not have are left out, never written as null.

What goes where, in short:
    @timestamp, event.*        time, categorization, id, duration (ns), outcome
    event.hash, event.sequence the RFC 9162 leaf hash (hex) and the ledger index, so a
                               document can be tied back to its inclusion proof
    source.*, destination.*    the caller and the callee (ip, port, address, domain)
    service.origin/target.*    caller and callee service name; `.id` is the SPIFFE ID
    tls.*                      version, SPIFFE IDs as x509 alternative names, peer certificate
    http.*, url.*, user_agent  the request
    rule.*                     the authorization policy (Istio `namespace/name`) and rule
    trace.id, span.id, error.*, labels.*, observer.name (the reporter), tags
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

import msgspec

from auditmesh.events import AuditEvent, Peer, decode_event
from auditmesh.ledger.merkle import leaf_hash

# The ECS version the documents conform to. Every field written exists in ECS 8.x and 9.x
# (9.0 removed none of them); the tests check them against the flat field list they load.
ECS_VERSION = "9.0.0"
DATASET = "auditmesh.audit"
MODULE = "auditmesh"

# ECS "event.category" and "event.type" allowed values, chosen per event kind
# (ECS Categorization Fields: each type listed is an expected type of a category written).
_CATEGORY: dict[str, list[str]] = {
    # A service-to-service HTTP call is web access that also crossed the network under a
    # policy decision; `network` is the category whose expected types include allowed/denied.
    "http": ["network", "web"],
    "tcp": ["network"],
    "authn": ["authentication"],
    "identity": ["iam"],  # SVID issuance, join tokens: credentials of a workload
    "policy_change": ["configuration"],
    "audit_read": ["api"],  # someone read the audit trail through the API
    "system": ["host"],
}
_BASE_TYPE: dict[str, list[str]] = {
    "http": ["access"],
    "tcp": ["connection"],
    "authn": ["info"],
    "identity": ["info"],
    "policy_change": ["change"],
    "audit_read": ["access"],
    "system": ["info"],
}
# ECS "event.action" is implementer-defined; these name what the event records.
_ACTION: dict[str, str] = {
    "http": "http-request",
    "tcp": "tcp-connection",
    "authn": "authentication",
    "identity": "identity",
    "policy_change": "policy-change",
    "audit_read": "audit-read",
    "system": "system",
}
# ECS network.direction, host-based monitoring context: the sidecar is the host.
_DIRECTION = {"inbound": "ingress", "outbound": "egress"}
_TLS_VERSION = re.compile(r"^(TLS|SSL)v?(\d(?:\.\d)?)$", re.IGNORECASE)
_HTTP_VERSION = re.compile(r"^(?:HTTP/)?(\d(?:\.\d)?)$", re.IGNORECASE)
_ALPN_HTTP = {"h2": "2", "h2c": "2", "h3": "3"}


def timestamp_text(time_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds: ECS `date` fields take this form (Elasticsearch's
    `strict_date_optional_time` reads up to nine fraction digits)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return f"{_whole_seconds(seconds)}.{nanos:09d}Z"


@functools.lru_cache(maxsize=64)  # consecutive events share their second
def _whole_seconds(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# 9999-12-31T23:59:59Z: RFC 3339 dates have four-digit years (and so has Python's datetime).
_LAST_DATE_S = 253_402_300_799


def _seconds_text(unix_s: int) -> str | None:
    """Unix seconds as an ECS date; None past year 9999, which no date can write. A peer
    certificate's notAfter is any count of seconds an event carries (up to 2^53 - 1): one
    such event made every export stop at it with a traceback."""
    if unix_s > _LAST_DATE_S:
        return None
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@functools.lru_cache(maxsize=4096)  # a mesh has few addresses; parsing them is not cheap
def _ip(text: str | None) -> str | None:
    """The value only when Elasticsearch's `ip` type takes it (no zone ids, valid syntax):
    one unparsable `source.ip` would make Elasticsearch refuse the whole document."""
    if text is None or "%" in text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _host_of(authority: str) -> str:
    """The host of an HTTP authority (RFC 9110 §7.2): `h`, `h:port`, `[v6]`, `[v6]:port`."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    if authority.count(":") == 1:
        return authority.split(":", 1)[0]
    return authority


def _endpoint(prefix: str, peer: Peer, out: dict[str, Any]) -> None:
    """ECS source.* / destination.*: `.address` holds the raw address, copied to `.ip` or
    `.domain` by what it is (ECS Source Fields, `source.address`)."""
    ip = _ip(peer.ip)
    host = _host_of(peer.host) if peer.host else None
    if host is not None and _ip(host) is not None:
        ip = ip or _ip(host)
        host = None
    address = peer.ip if peer.ip else host
    if address:
        out[f"{prefix}.address"] = address
    if ip is not None:
        out[f"{prefix}.ip"] = ip
    if host:
        out[f"{prefix}.domain"] = host
    if peer.port is not None:
        out[f"{prefix}.port"] = peer.port


def _service(prefix: str, peer: Peer, out: dict[str, Any]) -> None:
    """ECS service.origin.* / service.target.* (Service Fields, "field reuse"): the caller
    and the callee. ECS has no namespace field; the namespace is part of the SPIFFE ID."""
    if peer.service:
        out[f"{prefix}.name"] = peer.service
    if peer.identity:
        out[f"{prefix}.id"] = peer.identity


def _event_types(event: AuditEvent) -> list[str]:
    types = list(_BASE_TYPE[event.kind])
    decision = event.authz.decision if event.authz else None
    if event.kind in ("http", "tcp") and decision in ("allow", "deny"):
        types.append("allowed" if decision == "allow" else "denied")
    if event.kind == "tcp" and event.tcp is not None and event.tcp.end:
        types.append("end")
    status = event.http.status if event.http is not None else None
    failed = event.error is not None or (status is not None and status >= 500)
    if event.kind == "http" and decision != "deny" and failed:
        types.append("error")  # ECS: expected type of category `web`
    return types


def _tls(event: AuditEvent, out: dict[str, Any]) -> None:
    src, dst, tls = event.source, event.destination, event.tls
    # The SPIFFE ID is the X.509-SVID's one URI SAN (DESIGN.md, workload identity).
    if src is not None and src.identity:
        out["tls.client.x509.alternative_names"] = [src.identity]
    if dst is not None and dst.identity:
        out["tls.server.x509.alternative_names"] = [dst.identity]
    if tls is None:
        return
    out["tls.established"] = True
    if tls.version:
        match = _TLS_VERSION.match(tls.version)
        if match:  # ECS: numeric part in tls.version, lowercase protocol in version_protocol
            out["tls.version"] = match.group(2)
            out["tls.version_protocol"] = match.group(1).lower()
    # The peer certificate is the other end as the reporter saw it: the client's for an
    # inbound call, the server's for an outbound one; unknown direction, not written.
    side = {"inbound": "client", "outbound": "server"}.get(event.direction or "")
    if side is not None:
        if tls.peer_cert_sha256:  # ECS asks for uppercase hex fingerprints
            out[f"tls.{side}.hash.sha256"] = tls.peer_cert_sha256.upper()
        not_after = None if tls.peer_not_after is None else _seconds_text(tls.peer_not_after)
        if not_after is not None:
            out[f"tls.{side}.not_after"] = not_after


def _http(event: AuditEvent, out: dict[str, Any]) -> None:
    http = event.http
    if http is None:
        return
    if http.method:
        out["http.request.method"] = http.method
    if http.path is not None:
        # ECS url.path excludes the query; url.query excludes the `?` (URL Fields).
        path, question, query = http.path.partition("?")
        out["url.original"] = http.path
        out["url.path"] = path
        if question:
            out["url.query"] = query
    if http.status is not None:
        out["http.response.status_code"] = http.status
    # The event counts body bytes (the sidecar's relayed body, Envoy's %BYTES_RECEIVED%):
    # exactly ECS `http.*.body.bytes`. ECS defines `http.*.bytes` as body and headers, which
    # the event does not know; it is written too, with the body count (a lower bound), since
    # issue 5 and the dashboards built on it name that field.
    if http.request_bytes is not None:
        out["http.request.body.bytes"] = out["http.request.bytes"] = http.request_bytes
    if http.response_bytes is not None:
        out["http.response.body.bytes"] = out["http.response.bytes"] = http.response_bytes
    if http.request_id:
        out["http.request.id"] = http.request_id
    if http.user_agent:
        out["user_agent.original"] = http.user_agent
    if http.protocol:
        alpn = _ALPN_HTTP.get(http.protocol.lower())
        match = _HTTP_VERSION.match(http.protocol)
        version = alpn or (match.group(1) if match else None)
        if version is not None:
            out["http.version"] = version


def _labels(labels: dict[str, str], out: dict[str, Any]) -> None:
    """ECS `labels` (keyword values, no nested objects): a dot in a key would make
    Elasticsearch build an object, so dots become `_` as Beats' `labels.dedot` does. If a
    rewritten key meets an existing one, the key that needed no rewriting wins."""
    for key in sorted(labels, key=lambda k: ("." in k, k)):
        name = "labels." + key.replace(".", "_")
        out.setdefault(name, labels[key])


def ecs_fields(
    event: AuditEvent, *, index: int, leaf: bytes, original: bytes | None = None
) -> dict[str, Any]:
    """The flat ECS field map (dotted names) of one ledger entry.

    `leaf` is the entry's RFC 9162 leaf hash, `index` its position in the log; `original`,
    when given, is kept verbatim in `event.original` so anyone can recompute the leaf hash.
    """
    out: dict[str, Any] = {
        "@timestamp": timestamp_text(int(event.time_ns)),
        "ecs.version": ECS_VERSION,
        "event.kind": "event",
        "event.category": list(_CATEGORY[event.kind]),
        "event.type": _event_types(event),
        "event.action": _ACTION[event.kind],
        "event.outcome": event.outcome,  # same three allowed values as ECS
        "event.id": event.id,
        "event.duration": event.duration_us * 1000,  # ECS: nanoseconds
        "event.hash": leaf.hex(),
        "event.sequence": index,
        "event.dataset": DATASET,
        "event.module": MODULE,
        "observer.name": event.reporter,
    }
    if original is not None:
        out["event.original"] = original.decode()
    if event.direction is not None:
        out["network.direction"] = _DIRECTION[event.direction]
    if event.kind in ("http", "tcp"):
        http3 = event.http is not None and (event.http.protocol or "").lower() in ("h3", "http/3")
        out["network.transport"] = "udp" if http3 else "tcp"
    if event.kind == "http":
        out["network.protocol"] = "http"
    ips: list[str] = []
    for prefix, peer, service in (
        ("source", event.source, "service.origin"),
        ("destination", event.destination, "service.target"),
    ):
        if peer is None:
            continue
        _endpoint(prefix, peer, out)
        _service(service, peer, out)
        if f"{prefix}.ip" in out and out[f"{prefix}.ip"] not in ips:
            ips.append(out[f"{prefix}.ip"])
    if ips:
        out["network.type"] = "ipv6" if ":" in ips[0] else "ipv4"
        out["related.ip"] = ips
    _tls(event, out)
    _http(event, out)
    if event.tcp is not None:
        out["network.bytes"] = event.tcp.sent_bytes + event.tcp.received_bytes
        if event.tcp.end:
            out["event.reason"] = event.tcp.end
    tags = ["attested" if event.attested else "reported"]
    if event.authz is not None:
        authz = event.authz
        tags.append(f"authz-{authz.decision}")
        if authz.dry_run is not None:
            tags.append(f"dry-run-{authz.dry_run.decision}")
        if authz.policy:
            # ECS Rule Fields: the Istio policy is the ruleset; rules[i] inside it the rule.
            out["rule.ruleset"] = authz.policy
            if authz.rule is None:
                out["rule.name"] = authz.policy
            else:
                out["rule.name"] = f"{authz.policy}/rules/{authz.rule}"
                out["rule.id"] = str(authz.rule)
    out["tags"] = tags
    if event.trace is not None:  # ECS Tracing Fields
        out["trace.id"] = event.trace.trace_id
        if event.trace.span_id:
            out["span.id"] = event.trace.span_id
    if event.error is not None:
        out["error.type"] = event.error.type
        if event.error.message:
            out["error.message"] = event.error.message
    _labels(event.labels, out)
    return out


def nest(fields: dict[str, Any]) -> dict[str, Any]:
    """Dotted names to nested objects (`{"event": {"id": …}}`), as Elasticsearch stores them."""
    doc: dict[str, Any] = {}
    node: dict[str, Any] = doc
    at: tuple[str, ...] = ()  # fields come grouped (source.ip, source.port): reuse the parent
    for name, value in fields.items():
        parents, last = _parts(name)
        if parents != at:
            node, at = doc, parents
            for part in parents:  # get, not setdefault(part, {}): no dict made per field
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                node = child
        node[last] = value
    return doc


@functools.lru_cache(maxsize=1024)
def _parts(name: str) -> tuple[tuple[str, ...], str]:
    *parents, last = name.split(".")
    return tuple(parents), last


def ecs_document(
    event: AuditEvent, *, index: int, leaf: bytes, original: bytes | None = None
) -> dict[str, Any]:
    return nest(ecs_fields(event, index=index, leaf=leaf, original=original))


_ENCODER = msgspec.json.Encoder()


def ecs_line(index: int, data: bytes, *, preserve_original: bool = False) -> bytes:
    """One ledger entry (index, canonical bytes) as one NDJSON line, newline included."""
    event = decode_event(data)
    doc = ecs_document(
        event, index=index, leaf=leaf_hash(data), original=data if preserve_original else None
    )
    return _ENCODER.encode(doc) + b"\n"
