"""Linkerd JSON access-log lines → `AuditEvent`: the Linkerd ingest adapter's pure core.

Place in the house (DESIGN.md, "Telemetry in"): `auditmesh ingest linkerd` (cli/ingest.py)
feeds it the lines a Linkerd proxy writes with `config.linkerd.io/access-log: json`
(`LINKERD2_PROXY_ACCESS_LOG=json`). One line in, one record or one event out, no I/O;
imports `events` and the shared helpers of `ingest.envoy`.

The format (linkerd.io, "HTTP Access Logging"; linkerd2-proxy `linkerd/http/access-log`):
one flat JSON object per request with the keys `client.addr`, `client.id`, `host`,
`method`, `processing_ns`, `request_bytes`, `response_bytes`, `status`, `timestamp`,
`total_ns`, `trace_id`, `uri`, `user_agent`, `version`. Numbers other than `status` are
strings; a header that was absent is `""`, an unauthenticated client `"-"`. The proxy
records the log on the *inbound* side, so the reporting workload is the destination and
`client.*` is the caller. `host` names the destination service as `envoy.service_of` reads
it: `svc`, `svc.ns.svc[.cluster.local]`, or `svc.ns` when the client's or the server's
identity is in namespace `ns` (else `example.com` would be a service `example`); its port,
the one the client asked for, is `destination.port` (the log names no address the call reached).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

from auditmesh.events import HTTP, MAX_NAME, MAX_REQUEST_ID, MAX_TEXT, TLS, AuditEvent, Error
from auditmesh.ingest.envoy import (
    Clipper,
    authority_port,
    line_event_id,
    make_peer,
    namespace_of,
    parse_rfc3339,
    service_of,
    split_address,
    trace_of,
    validated,
)

_MAX_COUNT = 2**53 - 1
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 §5.6.2 (a method)
# Linkerd's proxy identity is a DNS name in its certificate:
#   <serviceaccount>.<namespace>.serviceaccount.identity.<control-plane-ns>.<trust-domain>
# (linkerd.io, "Automatic mTLS" → identity). We write it as the SPIFFE ID the same workload
# has in the Kubernetes convention, spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>,
# so Linkerd and Istio callers are compared by one form. This is a mapping, not what
# Linkerd's certificate says: the original name is kept in the `linkerd.client_id` label.
_LINKERD_IDENTITY = re.compile(
    r"([a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?)\.([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)"
    r"\.serviceaccount\.identity\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.([a-z0-9._-]+)"
)
_SPIFFE = re.compile(r"spiffe://[a-z0-9._-]+(/[^/?#]+)*")
_ZERO_TRACE_IDS = frozenset(("0" * 32, "0" * 16))  # 128-bit and B3 64-bit


class LinkerdLogError(ValueError):
    """A Linkerd access-log line that cannot be read; the message names the key and reason."""


@dataclass(frozen=True, slots=True)
class LinkerdRecord:
    """One Linkerd access-log line's fields, typed; `None` where the proxy left them empty."""

    raw: str
    time_ns: int
    client_addr: str | None = None
    client_id: str | None = None
    server_id: str | None = None  # not written by current proxies; accepted when present
    host: str | None = None
    method: str | None = None
    uri: str | None = None
    version: str | None = None
    status: int | None = None
    request_bytes: int | None = None
    response_bytes: int | None = None
    total_ns: int | None = None
    processing_ns: int | None = None
    trace_id: str | None = None
    user_agent: str | None = None


def parse_line(line: str) -> LinkerdRecord:
    """One line of a Linkerd proxy's JSON access log."""
    line = line.removesuffix("\n").removesuffix("\r")
    try:
        document = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise LinkerdLogError(f"not a JSON access-log line: {exc}") from None
    if not isinstance(document, dict):
        raise LinkerdLogError("not a JSON access-log line: expected an object")

    def text(key: str) -> str | None:
        value = document.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LinkerdLogError(f"{key}: expected a string, got {type(value).__name__}")
        value = str(value)
        return None if value in ("", "-") else value

    def count(key: str, what: str) -> int | None:
        value = text(key)
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()) or int(value) > _MAX_COUNT:
            raise LinkerdLogError(f"{key}: {_show(value)} is not {what}")
        return int(value)

    timestamp = text("timestamp")
    if timestamp is None:
        raise LinkerdLogError("timestamp: missing (is this a Linkerd access-log line?)")
    try:
        time_ns = parse_rfc3339(timestamp)
    except ValueError as exc:
        raise LinkerdLogError(f"timestamp: {exc}") from None
    method = text("method")
    if method is not None and not _TOKEN.fullmatch(method):
        raise LinkerdLogError(f"method: {_show(method)} is not an HTTP method")
    status = count("status", "a status code")
    if status is not None and not 100 <= status <= 599:
        raise LinkerdLogError(f"status: {status} is not a status code (100-599)")
    version = text("version")
    if version is not None and (len(version) > 16 or " " in version):
        raise LinkerdLogError(f"version: {_show(version)} is not an HTTP version")
    return LinkerdRecord(
        raw=line,
        time_ns=time_ns,
        client_addr=text("client.addr"),
        client_id=text("client.id"),
        server_id=text("server.id"),
        host=text("host"),
        method=method,
        uri=text("uri"),
        version=version,
        status=status,
        request_bytes=count("request_bytes", "a byte count"),
        response_bytes=count("response_bytes", "a byte count"),
        total_ns=count("total_ns", "a duration in nanoseconds"),
        processing_ns=count("processing_ns", "a duration in nanoseconds"),
        trace_id=text("trace_id"),
        user_agent=text("user_agent"),
    )


def identity_to_spiffe(name: str | None) -> str | None:
    """A Linkerd identity (see `_LINKERD_IDENTITY`) as a SPIFFE ID; a SPIFFE ID stays as it
    is (mesh expansion workloads); anything else has no identity we can state."""
    if not name:
        return None
    if name.startswith("spiffe://"):
        return name if len(name) <= 2048 and _SPIFFE.fullmatch(name) else None
    match = _LINKERD_IDENTITY.fullmatch(name.lower())
    if match is None:
        return None
    return f"spiffe://{match.group(6)}/ns/{match.group(3)}/sa/{match.group(1)}"


def to_event(record: LinkerdRecord, reporter: str) -> AuditEvent:
    """The audit event one access-log record reports (inbound, `attested=False`);
    `reporter` names the source, e.g. `ingest:linkerd:proxy.log`, and seeds the event id.
    Over-long values are clipped and named in label `auditmesh.clipped` (`envoy.Clipper`)."""
    clip = Clipper()
    client_ip, client_port = split_address(record.client_addr)
    client_identity = identity_to_spiffe(record.client_id)
    server_identity = identity_to_spiffe(record.server_id)
    service, namespace = service_of(
        record.host, namespace_of(client_identity), namespace_of(server_identity)
    )
    server_ip, server_port = split_address(record.host)  # a probe or a direct call by IP
    path = _path_of(record.uri)
    # W3C Trace Context §3.2.2.3 (B3 alike): an all-zero trace id is invalid, so absent,
    # and no request's id either.
    trace_id = None if record.trace_id in _ZERO_TRACE_IDS else record.trace_id
    trace = trace_of(None, trace_id)
    # The proxy takes trace_id from x-b3-traceid, else x-request-id, else x-amzn-trace-id:
    # a value that is not a trace id is the request's id.
    request_id = clip("http.request_id", trace_id, MAX_REQUEST_ID) if trace is None else None
    status = record.status
    failed = status is not None and status >= 500  # server side: OTel HTTP semantic conventions
    labels = {
        key: clip.label(key, value)
        for key, value in (
            ("linkerd.client_id", record.client_id),
            ("linkerd.server_id", record.server_id),
            ("linkerd.processing_ns", str(record.processing_ns or "")),
        )
        if value
    }
    event = AuditEvent(
        id=line_event_id(record.time_ns, reporter, record.raw),
        time_ns=record.time_ns,
        reporter=reporter,
        kind="http",
        # No status: the proxy recorded no response (the request failed inside it).
        outcome="unknown" if status is None else "failure" if failed else "success",
        duration_us=(record.total_ns or 0) // 1000,
        direction="inbound",
        source=make_peer(
            identity=client_identity,
            namespace=namespace_of(client_identity),
            ip=client_ip,
            port=client_port,
        ),
        destination=make_peer(
            identity=server_identity,
            service=service,
            namespace=namespace or namespace_of(server_identity),
            ip=server_ip,
            # the port the client asked for: the log names no address the call reached
            port=server_port or authority_port(record.host),
            host=clip("destination.host", record.host, MAX_NAME),
        ),
        # client.id is set only when the client authenticated with its certificate (mTLS).
        tls=TLS(mutual=True) if record.client_id else None,
        http=HTTP(
            method=record.method,
            path=clip("http.path", path, MAX_TEXT),
            status=status,
            request_bytes=record.request_bytes,
            response_bytes=record.response_bytes,
            protocol=record.version,
            user_agent=clip("http.user_agent", record.user_agent, MAX_TEXT),
            request_id=request_id,
        ),
        trace=trace,
        error=Error(type=str(status), message=f"HTTP {status}") if failed else None,
        labels=labels,
        attested=False,
    )
    return validated(clip.marked(event), LinkerdLogError)


def _path_of(uri: str | None) -> str | None:
    """The path and query of the request target: `http://webapp:7000/authors?x=1` (HTTP/2,
    absolute form) → `/authors?x=1`; `/ping` stays; anything else is kept as written."""
    if uri is None or uri.startswith("/"):
        return uri
    try:
        target = urlsplit(uri)
    except ValueError:
        return uri
    if not target.scheme or not target.netloc:
        return uri
    return (target.path or "/") + (f"?{target.query}" if target.query else "")


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")
