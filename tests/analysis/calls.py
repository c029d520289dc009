"""Hand-made calls for the analysis tests: one hop as the caller's sidecar (outbound) and the
callee's sidecar (inbound) report it, with W3C span links as proxy/tracing.py makes them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from auditmesh.events import HTTP, TLS, AuditEvent, Authz, Error, Peer, Trace, new_event_id

T0 = 1_764_300_000_000_000_000  # 2025-11-28T03:20:00Z, a whole minute
_spans = itertools.count(1)


def span() -> str:
    return f"{next(_spans):016x}"


def identity(service: str, namespace: str = "shop") -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{service}"


def peer(service: str | None, namespace: str = "shop", *, mtls: bool = True) -> Peer:
    if service is None:
        return Peer(ip="10.9.9.9", port=40000)
    return Peer(
        identity=identity(service, namespace) if mtls else None,
        service=service,
        namespace=namespace,
    )


def side(
    direction: str,
    caller: str | None,
    callee: str,
    *,
    trace_id: str,
    span_id: str,
    parent: str | None,
    time_ns: int,
    duration_us: int = 1000,
    status: int = 200,
    decision: str | None = "allow",
    path: str = "/",
    method: str = "GET",
    mtls: bool = True,
    request_bytes: int = 0,
    response_bytes: int = 0,
    namespace: str = "shop",
) -> AuditEvent:
    denied = decision == "deny"
    failed = denied or status >= 500
    reporter = identity(callee if direction == "inbound" else (caller or "?"), namespace)
    return AuditEvent(
        id=new_event_id(lambda: time_ns),
        time_ns=time_ns,
        duration_us=duration_us,
        reporter=reporter,
        kind="http",
        direction="inbound" if direction == "inbound" else "outbound",
        source=peer(caller, namespace, mtls=mtls),
        destination=peer(callee, namespace),
        tls=TLS(mutual=True, version="TLSv1.3") if mtls else None,
        http=HTTP(
            method=method,
            path=path,
            status=status,
            request_bytes=request_bytes,
            response_bytes=response_bytes,
        ),
        authz=None
        if decision is None
        else Authz(
            decision="deny" if denied else "allow",
            policy=f"{namespace}/{callee}-policy",
        ),
        trace=Trace(trace_id=trace_id, span_id=span_id, parent_span_id=parent),
        outcome="failure" if failed else "success",
        error=Error(type="rbac_access_denied") if denied else None,
    )


def hop(
    caller: str | None,
    callee: str,
    *,
    trace_id: str,
    parent: str | None,
    time_ns: int,
    sides: Sequence[str] = ("outbound", "inbound"),
    **details: object,
) -> tuple[list[AuditEvent], str, str]:
    """One call reported by `sides`; returns the events, the outbound span and the inbound span
    (the span the callee's own calls name as parent)."""
    out_span, in_span = span(), span()
    events = []
    for direction in sides:
        if direction == "outbound":
            events.append(
                side(
                    "outbound",
                    caller,
                    callee,
                    trace_id=trace_id,
                    span_id=out_span,
                    parent=parent,
                    time_ns=time_ns,
                    **details,  # type: ignore[arg-type]
                )
            )
        else:
            # the inbound sidecar saw the request a little later and for a little less long
            inner = dict(details)
            inner["duration_us"] = max(0, int(details.get("duration_us", 1000)) - 100)  # type: ignore[call-overload]
            events.append(
                side(
                    "inbound",
                    caller,
                    callee,
                    trace_id=trace_id,
                    span_id=in_span,
                    parent=out_span if "outbound" in sides else parent,
                    time_ns=time_ns + 50_000,
                    **inner,  # type: ignore[arg-type]
                )
            )
    return events, out_span, in_span
