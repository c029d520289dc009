"""What the sidecar saw of one request or connection, and the audit event it becomes.

The I/O layer fills an `Exchange` as the call goes; `to_event` is pure. Failures are
named like Envoy's response flags (Envoy docs, "Access logging: response flags").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

from auditmesh.events import (
    HTTP,
    MAX_LABEL,
    MAX_METHOD,
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_TEXT,
    TCP,
    TLS,
    AuditEvent,
    Authz,
    Error,
    Peer,
    Trace,
)
from auditmesh.proxy.accept import PeerTLS
from auditmesh.proxy.tcp import LOCAL_CERTIFICATE_EXPIRED, PEER_CERTIFICATE_EXPIRED, RelayResult

# Envoy response flag → (error.type, default status the proxy answers with)
FLAGS: dict[str, tuple[str, int]] = {
    "UF": ("upstream_connect_failure", 503),
    "UT": ("upstream_timeout", 504),
    "UR": ("upstream_reset", 503),
    "UC": ("upstream_connection_termination", 503),
    "DC": ("downstream_disconnect", 0),
    "NR": ("no_route", 404),
    "DPE": ("downstream_protocol_error", 400),
    "UPE": ("upstream_protocol_error", 502),
    "SI": ("stream_idle_timeout", 408),
    "RBAC": ("rbac_access_denied", 403),
    "SNM": ("secure_naming_mismatch", 503),
}
# A relay the sidecar cut when an SVID expired (RFC 5280 §6.1.3 (a)(2)): no Envoy flag names
# it; its end (tcp.end) is the event's error.type, also for a tunnel after 101
EXPIRED_ENDS = frozenset((PEER_CERTIFICATE_EXPIRED, LOCAL_CERTIFICATE_EXPIRED))


def reached_at(local: Peer, sockname: object) -> Peer:
    """This workload as one connection reached it: behind a listener on 0.0.0.0 or ::, the
    address the caller connected to (the event's destination.ip, and the policies')."""
    if isinstance(sockname, tuple) and sockname and sockname[0] != local.ip:
        return msgspec.structs.replace(local, ip=sockname[0])
    return local


def peer_of(tls: PeerTLS | None, remote: tuple[str, int]) -> Peer:
    """The caller as the inbound side knows it: its SPIFFE ID when it proved one, and the
    service named after its service account (the Kubernetes convention the demo follows)."""
    spiffe_id = None if tls is None else tls.spiffe_id
    service = None if spiffe_id is None else spiffe_id.service_account
    namespace = None if spiffe_id is None else spiffe_id.namespace
    return Peer(  # a SPIFFE path segment may be longer than a name (the full ID is kept)
        identity=None if spiffe_id is None else str(spiffe_id),
        service=service[:MAX_NAME] if service else None,
        namespace=namespace[:MAX_NAME] if namespace else None,
        ip=remote[0],
        port=remote[1],
    )


class BodyDigest:
    """SHA-256 of one body as relayed (DESIGN.md "Audit depth": at Metadata a body's digest
    may be kept as evidence, its data never). A body cut short is hashed as far as it went;
    the event's byte counts say how far."""

    __slots__ = ("_hash", "_hashed")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._hashed = 0

    def add(self, data: bytes) -> None:
        self._hash.update(data)
        self._hashed += len(data)

    def hexdigest(self) -> str | None:
        """None when no body went through (or only an answer of the proxy's own)."""
        return self._hash.hexdigest() if self._hashed else None


@dataclass(slots=True)
class BodyDigests:
    request: BodyDigest = field(default_factory=BodyDigest)
    response: BodyDigest = field(default_factory=BodyDigest)


@dataclass(slots=True)
class Exchange:
    """Mutable while the call is in flight; turned into an event once, at its end."""

    event_id: str
    start_ns: int
    reporter: str
    kind: str  # "http" or "tcp"
    direction: str
    local: Peer
    remote: Peer
    tls: PeerTLS | None = None  # the downstream caller's certificate (inbound)
    upstream_tls: PeerTLS | None = None  # the upstream server's certificate (outbound)
    method: str | None = None
    path: str | None = None
    original_path: str | None = None  # as sent, when normalizing changed it (proxy/paths.py)
    host: str | None = None
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    flag: str | None = None
    detail: str = ""
    end: str | None = None  # tcp, and a tunnel after 101: how the connection ended
    authz: Authz | None = None
    labels: dict[str, str] = field(default_factory=dict)
    digests: BodyDigests | None = None  # when the route keeps body digests

    def connected_to(self, server: PeerTLS | None) -> None:
        """The upstream connection this call uses (the last one, if it was retried; None: no
        connection could be made). Outbound, the server's verified X.509-SVID names the
        destination; secure naming has already checked it against the configured identity."""
        self.upstream_tls = server
        if server is not None and self.direction == "outbound":
            self.remote = msgspec.structs.replace(self.remote, identity=str(server.spiffe_id))

    def relayed(self, result: RelayResult) -> None:
        """How a byte relay (TCP mode, a tunnel after 101) went: bytes each way, its end; a
        reset is Envoy's UR, a cut at an expiry says whose certificate expired."""
        self.request_bytes, self.response_bytes = result.sent_bytes, result.received_bytes
        self.end = result.end
        if result.end == "reset":
            self.flag, self.detail = "UR", "connection reset"
        elif result.detail:
            self.detail = result.detail


def to_event(x: Exchange, end_ns: int) -> AuditEvent:
    """The event of a finished call. Values off the wire longer than the model allows (a 6 KiB
    path, a 10 KiB User-Agent) are clipped, and label `auditmesh.clipped` names them: an
    over-long header must not make the event invalid, and so the call unaudited."""
    clipped: list[str] = []

    def clip(name: str, value: str | None, limit: int) -> str | None:
        if value is None or len(value) <= limit:
            return value
        clipped.append(name)
        return value[:limit]

    source, destination = (x.remote, x.local) if x.direction == "inbound" else (x.local, x.remote)
    host = clip("destination.host", destination.host, MAX_NAME)  # a Host no route serves
    if host is not destination.host:
        destination = msgspec.structs.replace(destination, host=host)
    failure = FLAGS[x.flag][0] if x.flag is not None else x.end if x.end in EXPIRED_ENDS else None
    failed = failure is not None or (x.status is not None and x.status >= 500)
    error = None
    if failure is not None:
        error = Error(type=failure, message=clip("error.message", x.detail, MAX_TEXT) or "")
    elif x.status is not None and x.status >= 500:
        error = Error(type="upstream_error", message=f"HTTP {x.status}")
    tls = None
    peer_tls = x.tls if x.tls is not None else x.upstream_tls  # the other end's certificate
    if peer_tls is not None:
        tls = TLS(
            mutual=True,
            version=peer_tls.version,
            peer_cert_sha256=peer_tls.cert_sha256,
            peer_not_after=peer_tls.not_after,
        )
    http = None
    tcp = None
    if x.kind == "http":
        http = HTTP(
            method=clip("http.method", x.method, MAX_METHOD),
            path=clip("http.path", x.path, MAX_TEXT),
            status=x.status if x.status and x.status >= 100 else None,
            request_bytes=x.request_bytes,
            response_bytes=x.response_bytes,
            protocol="HTTP/1.1",
            user_agent=clip("http.user_agent", x.user_agent, MAX_TEXT),
            request_id=clip("http.request_id", x.request_id, MAX_REQUEST_ID),
            request_body_sha256=None if x.digests is None else x.digests.request.hexdigest(),
            response_body_sha256=None if x.digests is None else x.digests.response.hexdigest(),
        )
    else:
        tcp = TCP(sent_bytes=x.request_bytes, received_bytes=x.response_bytes, end=x.end)
    labels = dict(x.labels)
    if x.flag is not None:
        labels["envoy.response_flags"] = x.flag
    if x.original_path is not None:  # e.g. /%61dmin/x, served and authorized as /admin/x
        labels["http.original_path"] = clip("http.original_path", x.original_path, MAX_LABEL) or ""
    if clipped:
        labels["auditmesh.clipped"] = ",".join(clipped)
    return AuditEvent(
        id=x.event_id,
        time_ns=x.start_ns,
        duration_us=max(0, (end_ns - x.start_ns) // 1000),
        reporter=x.reporter,
        kind="http" if x.kind == "http" else "tcp",
        direction="inbound" if x.direction == "inbound" else "outbound",
        source=source,
        destination=destination,
        tls=tls,
        http=http,
        tcp=tcp,
        authz=x.authz,
        trace=None
        if x.trace_id is None
        else Trace(trace_id=x.trace_id, span_id=x.span_id, parent_span_id=x.parent_span_id),
        outcome="failure" if failed else "success",
        error=error,
        labels=labels,
        attested=True,
    )
