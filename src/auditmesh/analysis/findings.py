"""Findings: which identity misbehaves, when, by how much, with the events that show it.

Place in the house: analysis/, read-only over the ledger's events. The CLI (`auditmesh
findings`), the console (GET /v1/findings) and the demo call `detect`; it imports nothing of
the project but `events`, and does no I/O.

Pure: `detect(events, start_ns=..., end_ns=...)` takes (ledger index, AuditEvent) pairs and
returns findings; time is the events' own: `start_ns`/`end_ns` select the events analysed, and
the range runs from the first to the last selected call (a window wider than the data does not
leave an empty baseline). The range is cut into buckets (a round width near 1/20 of it, 1 s
to 60 s, aligned to the clock); the first quarter is the baseline each identity and each edge
is compared with (mean per bucket for volumes, pooled rate for failures, pooled p95 for
latency); later buckets are compared with it, and adjacent flagged buckets merge. A call is one
inbound http/tcp event (the callee's sidecar saw it, so each call counts once even when both
sides report it); authn failures are counted separately. Thresholds are named below with the
reason for each: a finding needs both a large ratio against the baseline and an absolute
floor, so quiet edges and steady Poisson-like traffic do not alarm.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import msgspec

from auditmesh.events import AuditEvent, Error, Peer

BASELINE_SHARE = 0.25  # the earliest quarter of the range is what "normal" means
BUCKETS = 20  # the range is cut into about this many buckets…
BUCKET_WIDTHS_S = (1, 2, 3, 5, 10, 15, 30, 60)  # …of a round width, 1 s to 1 min, on the clock
ERROR_RATE_FACTOR = 3.0  # an error burst triples the baseline failure rate…
ERROR_RATE_MARGIN = 0.2  # …and adds 20 points to it (a 1 % baseline is not alarmed at 3 %)
MIN_ERRORS = 5  # …with at least this many failures in the run of such buckets
VOLUME_FACTOR = 4.0  # excessive volume: 4× the baseline per bucket…
MIN_REQUESTS = 20  # …and at least 20 calls, or…
MIN_BYTES = 1_000_000  # …at least 1 MB of responses in the bucket
LATENCY_FACTOR = 5.0  # a p95 five times the baseline p95 (a loaded host easily triples it)…
MIN_LATENCY_CALLS = 10  # …over at least 10 calls, of at least…
MIN_LATENCY_US = 50_000  # …50 ms (scheduling noise is not a regression)…
MIN_LATENCY_BUCKETS = 3  # …lasting three buckets or more (a loaded moment is not a regression)
NEW_EDGE_MIN_CALLS = 3  # a new edge: first called after the baseline, 3+ calls, and at the
NEW_EDGE_MIN_EXPECTED = 10.0  # rate it has had since, 10+ calls were due in its silence before
#   (a steady edge that quiet by chance: P = e^-10 ≈ 5e-5), so a rare edge is not "new"
MIN_DENIALS = 3  # repeated denials: 3 or more for one caller at one service (one or two are
#   a client finding out; a caller that keeps trying after a 403 is a pattern)
MIN_AUTHN_FAILURES = 2  # failed authentications: 2 or more from one source at one service (a
#   lone refused handshake is a stale certificate or a probe; every workload of the mesh has a
#   certificate, so a second refusal is a pattern — the demo's intruder makes 2 to 5 attempts)
MTLS_NORM = 0.9  # a service whose baseline calls are 90 %+ mTLS expects mTLS (so a PERMISSIVE
#   edge service that takes plaintext from outside as its norm raises nothing)
EVIDENCE_CAP = 20  # event ids listed per finding (the count says how many there are)
BUNDLE_CAP = 1000  # ledger indices kept per finding for its evidence bundle

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that stands out. The window is [start_ns, end_ns]: bucket bounds for findings
    measured per bucket, first and last event for counts. `observed` and `expected` are in
    `unit`; `count` is how many events show it, of which the first `EVIDENCE_CAP` are listed
    (`event_ids` with their ledger `indices`)."""

    kind: str  # error_burst, latency_regression, excessive_volume, new_edge, repeated_denials,
    #           plaintext_calls, failed_authentication
    severity: str  # "high" or "medium"
    responsible: str  # SPIFFE ID when known, else a service name or an address
    destination: str  # the service called
    start_ns: int
    end_ns: int
    observed: float
    expected: float  # the baseline figure, in the same unit
    unit: str
    count: int  # events behind the finding
    event_ids: tuple[str, ...]
    indices: tuple[int, ...]
    summary: str
    source: str | None = None  # the caller's service (or address) when the finding is an edge's
    details: tuple[tuple[str, str], ...] = ()  # e.g. ("policy", "shop/payments-only-orders")
    evidence: tuple[int, ...] = ()  # ledger indices of the first `BUNDLE_CAP`, for a bundle
    search: tuple[tuple[str, str], ...] = ()  # event-search filters every one of its events
    #   meets (`_search`); with the window, the console's link to the evidence

    @property
    def ratio(self) -> float | None:
        """observed / expected; None when nothing was expected (a count against zero)."""
        return self.observed / self.expected if self.expected > 0 else None

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "responsible": self.responsible,
            "destination": self.destination,
            "window": {"start_ns": str(self.start_ns), "end_ns": str(self.end_ns)},
            "observed": round(self.observed, 3),
            "expected": round(self.expected, 3),
            "ratio": None if self.ratio is None else round(self.ratio, 2),
            "unit": self.unit,
            "source": self.source,
            "details": dict(self.details),
            "count": self.count,
            "event_ids": list(self.event_ids),
            "indices": list(self.indices),
            "evidence_indices": list(self.evidence),
            "search": dict(self.search),
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Finding:
        """A Finding as `to_json` wrote it (the server's GET /v1/findings): `observed` and
        `expected` rounded as the JSON has them, the rest exactly."""
        return cls(
            kind=item["kind"],
            severity=item["severity"],
            responsible=item["responsible"],
            destination=item["destination"],
            start_ns=int(item["window"]["start_ns"]),
            end_ns=int(item["window"]["end_ns"]),
            observed=item["observed"],
            expected=item["expected"],
            unit=item["unit"],
            count=item["count"],
            event_ids=tuple(item["event_ids"]),
            indices=tuple(item["indices"]),
            summary=item["summary"],
            source=item["source"],
            details=tuple(item["details"].items()),
            evidence=tuple(item["evidence_indices"]),
            search=tuple(item["search"].items()),
        )


@dataclass(slots=True)
class _Cell:
    """Calls of one key (edge, caller or service) in one bucket."""

    calls: list[tuple[int, AuditEvent]] = field(default_factory=list)
    failures: list[tuple[int, AuditEvent]] = field(default_factory=list)
    denials: list[tuple[int, AuditEvent]] = field(default_factory=list)
    response_bytes: int = 0


def _who(event: AuditEvent) -> str:
    src = event.source
    if src is None:
        return "unknown"
    return src.identity or src.service or src.ip or "unknown"


def _service(event: AuditEvent) -> str:
    dst = event.destination
    return (dst.service if dst else None) or "unknown"


def _caller_service(event: AuditEvent) -> str:
    src = event.source
    return (src.service if src else None) or (src.ip if src else None) or "outside"


def _denied(event: AuditEvent) -> bool:
    return event.authz is not None and event.authz.decision == "deny"


# Failures the caller brought about (Envoy's DPE, DC, SI, NR as the sidecar and Envoy's logs
# name them): a malformed request, a client that hung up or stalled, a host no route serves.
CALLER_CAUSED = frozenset(
    {
        "downstream_protocol_error",
        "downstream_disconnect",
        "downstream_connection_termination",
        "stream_idle_timeout",
        "no_route",
        "no_route_found",
    }
)


# A relay the inbound sidecar cut as the caller's SVID expired (proxy/tcp.py); its own SVID
# expiring (`local_certificate_expired`) is the callee's failure.
CALLER_CERTIFICATE_EXPIRED = "peer_certificate_expired"


def _caller_caused(error: Error, direction: str | None) -> bool:
    return error.type in CALLER_CAUSED or (
        error.type == CALLER_CERTIFICATE_EXPIRED and direction == "inbound"
    )


def _failed(event: AuditEvent) -> bool:
    """The callee failed the call: not a denial, not the caller's own doing."""
    if _denied(event) or (event.error is not None and _caller_caused(event.error, event.direction)):
        return False
    status = event.http.status if event.http else None
    return event.outcome == "failure" or (status is not None and status >= 500)


def _upstream_failed(event: AuditEvent) -> bool:
    """An outbound call the callee failed to answer: refused, reset, timed out (UF/UR/UC/UT)."""
    return event.error is not None and event.error.type.startswith("upstream_")


def _error_of(event: AuditEvent) -> str:
    if event.error is not None:
        return event.error.type
    return f"HTTP {event.http.status}" if event.http and event.http.status else event.outcome


def _response_bytes(event: AuditEvent) -> int:
    if event.http is not None:
        return event.http.response_bytes or 0
    return event.tcp.received_bytes if event.tcp is not None else 0


def _p95(values: Sequence[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, (len(ordered) * 95) // 100)]) if ordered else 0.0


class _Grid:
    """Buckets of a round width aligned to the clock (a window reads 10:00:05–10:00:10 and
    the same events fall in the same buckets whatever the range), from the bucket holding
    `start_ns` to the one holding `end_ns`; the baseline is the range's first quarter."""

    def __init__(self, start_ns: int, end_ns: int) -> None:
        span = max(end_ns - start_ns, 1)
        ideal = span / BUCKETS / 1e9  # the round width nearest to it, on a log scale
        nearest = min(BUCKET_WIDTHS_S, key=lambda w: abs(math.log(w / max(ideal, 1e-9))))
        self.width = nearest * 1_000_000_000
        self.first = start_ns  # the first event's time
        self.start = start_ns - start_ns % self.width
        self.baseline_end = start_ns + int(span * BASELINE_SHARE)
        self.count = (end_ns - self.start) // self.width + 1

    def bucket(self, time_ns: int) -> int:
        return (time_ns - self.start) // self.width

    def bounds(self, bucket: int) -> tuple[int, int]:
        first = self.start + bucket * self.width
        return first, first + self.width

    @property
    def baseline_buckets(self) -> int:
        return max(1, (self.baseline_end - self.start) // self.width)


def _evidence(
    items: Sequence[tuple[int, AuditEvent]],
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """The ids and indices listed (the first `EVIDENCE_CAP`), and those bundled."""
    capped = items[:EVIDENCE_CAP]
    bundled = tuple(i for i, _ in items[:BUNDLE_CAP])
    return tuple(e.id for _, e in capped), bundled[:EVIDENCE_CAP], bundled


def detect(
    events: Iterable[tuple[int, AuditEvent]],
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> list[Finding]:
    """All findings over these (ledger index, event) pairs, most severe and earliest first.

    Only events with `start_ns <= time_ns < end_ns` count (either bound may be left out), so
    `detect(load_events(data))` is "everything in the ledger". Deterministic: the same events
    give the same findings in the same order."""
    calls: list[tuple[int, AuditEvent]] = []
    outbound: list[AuditEvent] = []  # only to follow traces down (each call counts inbound)
    authn: list[tuple[int, AuditEvent]] = []
    for index, event in events:
        if (start_ns is not None and event.time_ns < start_ns) or (
            end_ns is not None and event.time_ns >= end_ns
        ):
            continue
        if event.kind == "authn" and event.outcome == "failure":
            authn.append((index, event))
        elif event.kind in ("http", "tcp") and event.direction == "inbound":
            calls.append((index, event))
        elif event.kind in ("http", "tcp") and event.trace is not None:
            outbound.append(event)
    if not calls and not authn:
        return []
    calls, outbound = _qualify_shared_names(calls, outbound)
    times = [e.time_ns for _, e in calls + authn]
    grid = _Grid(min(times), max(times))
    floods = _volume(calls, grid)
    bursts = _error_bursts(calls, grid, outbound)
    new_edges = _new_edges(calls, grid)
    new = {(f.responsible, f.source, f.destination) for f in new_edges}
    findings = [
        *bursts,
        # a flood on an edge that did not exist before is reported once, as the new edge
        *(f for f in floods if (f.responsible, f.source, f.destination) not in new),
        *_attribute(_latency(calls, grid), [*floods, *bursts]),
        *new_edges,
        *_denials(calls, grid),
        *_plaintext(calls, grid),
        *_authn_failures(authn),
    ]
    return sorted(
        findings,
        key=lambda f: (f.severity != "high", f.start_ns, f.kind, f.responsible, f.destination),
    )


def _qualify_shared_names(
    calls: list[tuple[int, AuditEvent]], outbound: list[AuditEvent]
) -> tuple[list[tuple[int, AuditEvent]], list[AuditEvent]]:
    """A service name used in several namespaces becomes `service.namespace` (as the graph
    names it), so two services of one name are never judged, or blamed, as one."""
    seen: dict[str, set[str]] = defaultdict(set)
    for event in (*(e for _, e in calls), *outbound):
        for peer in (event.source, event.destination):
            if peer is not None and peer.service and peer.namespace:  # none: not another one
                seen[peer.service].add(peer.namespace)
    shared = {name for name, namespaces in seen.items() if len(namespaces) > 1}
    if not shared:
        return calls, outbound

    def qualified(peer: Peer | None) -> Peer | None:
        if peer is None or peer.service not in shared or not peer.namespace:
            return peer
        # the namespace moves into the name: `_search` names the peer as the graph does
        return msgspec.structs.replace(
            peer, service=f"{peer.service}.{peer.namespace}", namespace=None
        )

    def rename(event: AuditEvent) -> AuditEvent:
        return msgspec.structs.replace(
            event, source=qualified(event.source), destination=qualified(event.destination)
        )

    return [(i, rename(e)) for i, e in calls], [rename(e) for e in outbound]


def _cells(
    calls: Sequence[tuple[int, AuditEvent]], grid: _Grid, key: Callable[[AuditEvent], K]
) -> dict[K, dict[int, _Cell]]:
    table: dict[K, dict[int, _Cell]] = defaultdict(lambda: defaultdict(_Cell))
    for index, event in calls:
        cell = table[key(event)][grid.bucket(event.time_ns)]
        cell.calls.append((index, event))
        if _failed(event):
            cell.failures.append((index, event))
        if _denied(event):
            cell.denials.append((index, event))
        cell.response_bytes += _response_bytes(event)
    return table


def _runs(flagged: list[int]) -> list[list[int]]:
    """Consecutive bucket numbers, merged into windows."""
    runs: list[list[int]] = []
    for bucket in sorted(flagged):
        if runs and bucket == runs[-1][-1] + 1:
            runs[-1].append(bucket)
        else:
            runs.append([bucket])
    return runs


def _own_failures(
    calls: Sequence[tuple[int, AuditEvent]], outbound: Sequence[AuditEvent] = ()
) -> list[tuple[int, AuditEvent]]:
    """Calls minus failures passed on from further down the same trace: a frontend that
    answers 502 because catalog failed, or 504 because payments was too slow, is not the one
    misbehaving. "Further down" follows the spans' parent links (W3C trace context: each
    sidecar's span is the child of the one before, outbound events included), so clocks that
    disagree by a few ms change nothing; events without span ids fall back to time order."""
    parent: dict[str, str] = {}
    below: dict[str, list[AuditEvent]] = defaultdict(list)  # trace → failures to look up from
    for _, event in calls:
        if event.trace is not None:
            if event.trace.span_id and event.trace.parent_span_id:
                parent[event.trace.span_id] = event.trace.parent_span_id
            if _failed(event):
                below[event.trace.trace_id].append(event)
    for event in outbound:
        if event.trace is not None:
            if event.trace.span_id and event.trace.parent_span_id:
                parent[event.trace.span_id] = event.trace.parent_span_id
            if _upstream_failed(event):
                below[event.trace.trace_id].append(event)

    def passed_on(event: AuditEvent) -> bool:
        assert event.trace is not None
        here, span = _service(event), event.trace.span_id
        for other in below[event.trace.trace_id]:
            if other is event:
                continue
            if other.direction == "inbound" and _service(other) == here:
                continue  # the same service again: its own failure, not a callee's
            if span is None:  # no links: a failure that started after this call began
                if other.time_ns >= event.time_ns:
                    return True
            elif _descends(other, span, parent):
                return True
        return False

    return [
        item
        for item in calls
        if item[1].trace is None or not _failed(item[1]) or not passed_on(item[1])
    ]


def _descends(event: AuditEvent, ancestor: str, parent: dict[str, str]) -> bool:
    """Whether `ancestor` is on the chain of parent spans above `event`'s span."""
    assert event.trace is not None
    span = event.trace.parent_span_id
    for _ in range(64):  # a call chain is never this deep; a loop in bad data ends here
        if span is None:
            return False
        if span == ancestor:
            return True
        span = parent.get(span)
    return False


def _error_bursts(
    calls: Sequence[tuple[int, AuditEvent]], grid: _Grid, outbound: Sequence[AuditEvent] = ()
) -> list[Finding]:
    found = []
    for service, cells in _cells(_own_failures(calls, outbound), grid, _service).items():
        base = [c for b, c in cells.items() if b < grid.baseline_buckets]
        base_calls = sum(len(c.calls) for c in base)
        base_rate = sum(len(c.failures) for c in base) / base_calls if base_calls else 0.0
        threshold = max(base_rate * ERROR_RATE_FACTOR, base_rate + ERROR_RATE_MARGIN)
        flagged = [
            b
            for b, c in cells.items()
            if b >= grid.baseline_buckets
            and c.failures
            and len(c.failures) / len(c.calls) >= threshold
        ]
        for run in _runs(flagged):
            failures = [f for b in run for f in cells[b].failures]
            if len(failures) < MIN_ERRORS:  # over the whole run: a quiet service's outage
                continue  # counts as much as a busy one's
            total = sum(len(cells[b].calls) for b in run)
            rate = len(failures) / total
            ids, indices, evidence = _evidence(failures)
            dst = failures[0][1].destination
            found.append(
                Finding(
                    "error_burst",
                    "high",
                    (dst.identity if dst else None) or str(service),
                    str(service),
                    grid.bounds(run[0])[0],
                    grid.bounds(run[-1])[1],
                    rate,
                    base_rate,
                    "failure rate",
                    len(failures),
                    ids,
                    indices,
                    f"{service} failed {len(failures)} of {total} calls ({rate:.0%}) against "
                    f"a baseline of {base_rate:.0%}",
                    details=(
                        ("calls", str(total)),
                        ("baseline_calls", str(base_calls)),
                        ("errors", _tally(_error_of(e) for _, e in failures)[:500]),
                        ("callers", _tally(_caller_service(e) for _, e in failures)[:500]),
                    ),
                    evidence=evidence,
                    search=_search(failures),
                )
            )
    return found


def _edge(event: AuditEvent) -> tuple[str, str, str]:
    return (_who(event), _caller_service(event), _service(event))


def _volume(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    """Served calls and response bytes per bucket of each edge against its baseline mean.
    Denied attempts are left out: they moved no data, and `repeated_denials` counts them."""
    served = [item for item in calls if not _denied(item[1])]
    found = []
    for (who, caller, service), cells in _cells(served, grid, _edge).items():
        n = grid.baseline_buckets
        base_calls = sum(len(c.calls) for b, c in cells.items() if b < n) / n
        base_bytes = sum(c.response_bytes for b, c in cells.items() if b < n) / n
        many_calls = {
            b
            for b, c in cells.items()
            if len(c.calls) >= MIN_REQUESTS and len(c.calls) > VOLUME_FACTOR * base_calls
        }
        many_bytes = {
            b
            for b, c in cells.items()
            if c.response_bytes >= MIN_BYTES and c.response_bytes > VOLUME_FACTOR * base_bytes
        }
        flagged = [b for b in many_calls | many_bytes if b >= n]
        for run in _runs(flagged):
            items = [x for b in run for x in cells[b].calls]
            per_bucket = len(items) / len(run)
            sent = sum(cells[b].response_bytes for b in run) / len(run)
            by_bytes = any(b in many_bytes for b in run)
            ids, indices, evidence = _evidence(items)
            seconds = grid.width / 1e9
            found.append(
                Finding(
                    "excessive_volume",
                    "medium",
                    who,
                    service,
                    grid.bounds(run[0])[0],
                    grid.bounds(run[-1])[1],
                    sent if by_bytes else per_bucket,
                    base_bytes if by_bytes else base_calls,
                    "response bytes per bucket" if by_bytes else "calls per bucket",
                    len(items),
                    ids,
                    indices,
                    f"{caller} → {service}: {per_bucket:.0f} calls and {sent / 1e6:.1f} MB per "
                    f"{seconds:g} s against a baseline of {base_calls:.1f} calls and "
                    f"{base_bytes / 1e6:.2f} MB",
                    source=caller,
                    details=(
                        ("bucket_seconds", f"{seconds:g}"),
                        ("calls_per_bucket", f"{per_bucket:.1f}"),
                        ("baseline_calls_per_bucket", f"{base_calls:.2f}"),
                        ("response_bytes_per_bucket", f"{sent:.0f}"),
                        ("baseline_response_bytes_per_bucket", f"{base_bytes:.0f}"),
                    ),
                    evidence=evidence,
                    search=_search(items),
                )
            )
    return found


def _self_times(calls: Sequence[tuple[int, AuditEvent]]) -> dict[int, int]:
    """Each call's own time: its duration less the calls it made further down its trace
    (other services, started inside it), so a slow callee is not blamed on its callers."""
    by_trace: dict[str, list[AuditEvent]] = defaultdict(list)
    for _, event in calls:
        if event.trace is not None:
            by_trace[event.trace.trace_id].append(event)
    own: dict[int, int] = {}
    for index, event in calls:
        spent = event.duration_us
        if event.trace is not None:
            end = event.time_ns + event.duration_us * 1000
            here = _service(event)
            spent -= sum(
                other.duration_us
                for other in by_trace[event.trace.trace_id]
                if event.time_ns < other.time_ns < end and _service(other) != here
            )
        own[index] = max(spent, 0)
    return own


def _latency(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    own = _self_times(calls)
    found = []
    for service, cells in _cells(calls, grid, _service).items():
        base = [own[i] for b, c in cells.items() if b < grid.baseline_buckets for i, _ in c.calls]
        if len(base) < MIN_LATENCY_CALLS:
            continue
        base_p95 = _p95(base)
        flagged = []
        for b, c in cells.items():
            times = [own[i] for i, _ in c.calls]
            p95 = _p95(times)
            if (
                b >= grid.baseline_buckets
                and len(times) >= MIN_LATENCY_CALLS
                and p95 >= MIN_LATENCY_US
                and p95 > LATENCY_FACTOR * base_p95
            ):
                flagged.append(b)
        for run in _runs(flagged):
            if len(run) < MIN_LATENCY_BUCKETS:
                continue
            items = [x for b in run for x in cells[b].calls]
            p95 = _p95([own[i] for i, _ in items])
            ids, indices, evidence = _evidence(items)
            dst = items[0][1].destination
            found.append(
                Finding(
                    "latency_regression",
                    "medium",
                    (dst.identity if dst else None) or service,
                    service,
                    grid.bounds(run[0])[0],
                    grid.bounds(run[-1])[1],
                    p95,
                    base_p95,
                    "p95 µs of own time",
                    len(items),
                    ids,
                    indices,
                    f"{service}: p95 of its own time {p95 / 1000:.1f} ms against "
                    f"{base_p95 / 1000:.1f} ms",
                    evidence=evidence,
                    search=_search(items),
                )
            )
    return found


def _attribute(regressions: list[Finding], causes: list[Finding]) -> list[Finding]:
    """A latency regression at a service that was flooded, or failing, at the same time is
    that cause's doing: the finding names the cause's responsible identity, and says which."""
    result = []
    for finding in regressions:
        cause = next(
            (
                f
                for f in causes
                if f.destination == finding.destination
                and f.start_ns < finding.end_ns
                and finding.start_ns < f.end_ns
            ),
            None,
        )
        if cause is not None:
            why = (
                f"while {cause.responsible} flooded {cause.destination}"
                if cause.kind == "excessive_volume"
                else f"while {cause.destination} was failing ({cause.summary})"
            )
            finding = replace(
                finding, responsible=cause.responsible, summary=f"{finding.summary}, {why}"
            )
        result.append(finding)
    return result


def _new_edges(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    """Edges whose first call comes after the baseline, busy enough that their silence before
    is not chance: at the rate they have had since (calls after the first, over the time
    after it), `NEW_EDGE_MIN_EXPECTED` calls were due between the start and the first call."""
    by_edge: dict[tuple[str, str, str], list[tuple[int, AuditEvent]]] = defaultdict(list)
    for item in calls:
        by_edge[_edge(item[1])].append(item)
    range_end = max(e.time_ns for _, e in calls) if calls else grid.first
    found = []
    for (who, caller, service), items in by_edge.items():
        start = min(e.time_ns for _, e in items)
        if start < grid.baseline_end or len(items) < NEW_EDGE_MIN_CALLS:
            continue
        rate = (len(items) - 1) / max(range_end - start, grid.width)
        would_have_seen = rate * (start - grid.first)
        if would_have_seen < NEW_EDGE_MIN_EXPECTED:
            continue
        denied = sum(1 for _, e in items if _denied(e))
        if denied == len(items):
            continue  # every call refused: `repeated_denials` reports it, with the policy
        moved = sum(_response_bytes(e) for _, e in items)
        ids, indices, evidence = _evidence(items)
        found.append(
            Finding(
                "new_edge",
                "medium",
                who,
                service,
                start,
                max(e.time_ns for _, e in items),
                float(len(items)),
                0.0,
                "calls",
                len(items),
                ids,
                indices,
                f"{caller} started calling {service} ({len(items)} calls"
                + (f", {denied} denied" if denied else "")
                + (f", {moved / 1e6:.1f} MB of responses" if moved >= MIN_BYTES else "")
                + f"), never seen before; at this rate {would_have_seen:.0f} calls were due "
                "in the silence before",
                source=caller,
                details=(
                    ("first_call_ns", str(start)),
                    ("denied", str(denied)),
                    ("response_bytes", str(moved)),
                    ("calls_due_before_at_this_rate", f"{would_have_seen:.1f}"),
                ),
                evidence=evidence,
                search=_search(items),
            )
        )
    return found


_SPIFFE = re.compile(r"^spiffe://[a-z0-9._-]+(/[^/?#]+)*$")  # as analysis/query.py reads one
_SEARCHED = (  # filters of the event search that a finding's events may all share
    ("kind", lambda e: e.kind),
    ("direction", lambda e: e.direction),
    ("decision", lambda e: e.authz.decision if e.authz else None),
    ("status", lambda e: f"{e.http.status // 100}xx" if e.http and e.http.status else None),
)


def _party_names(peer: Peer | None) -> set[str]:
    """The names by which the event search (analysis/query.py `readings`) selects this peer:
    its SPIFFE ID; its service as the graph names it (`service.namespace`, or the service
    alone when no namespace is known, or it is in the name already, `_qualify_shared_names`);
    `unknown` for a peer with neither."""
    if peer is None:
        return {"unknown"}
    names = set()
    if peer.identity and _SPIFFE.match(peer.identity):
        names.add(peer.identity)
    if peer.service:
        names.add(f"{peer.service}.{peer.namespace}" if peer.namespace else peer.service)
    elif not peer.identity:
        names.add("unknown")
    return names


def _search(items: Sequence[tuple[int, AuditEvent]]) -> tuple[tuple[str, str], ...]:
    """Event-search filters (`GET /v1/events`, `auditmesh query`) that every one of the
    finding's events meets: the caller and the callee when all share one (a SPIFFE ID
    rather than a service), and the kind, direction, decision and status class they all
    have. With the finding's window, they select its events and as few others as the search
    can tell apart (no filter says "plaintext" or "not denied")."""
    events = [e for _, e in items]
    if not events:
        return ()
    found: list[tuple[str, str]] = []
    for name, side in (("source", "source"), ("dest", "destination")):
        common = set.intersection(*(_party_names(getattr(e, side)) for e in events))
        if common:
            found.append((name, min(common, key=lambda n: (not n.startswith("spiffe://"), n))))
    for name, value in _SEARCHED:
        values = {value(e) for e in events}
        if len(values) == 1 and None not in values:
            found.append((name, str(values.pop())))
    return tuple(found)


def _counted(
    kind: str,
    who: str,
    service: str,
    items: Sequence[tuple[int, AuditEvent]],
    unit: str,
    summary: str,
    *,
    source: str | None = None,
    details: tuple[tuple[str, str], ...] = (),
) -> Finding:
    """A finding that is a count of events with no baseline (the expected count is zero)."""
    ids, indices, evidence = _evidence(items)
    times = [e.time_ns for _, e in items]
    return Finding(
        kind,
        "high",
        who,
        service,
        min(times),
        max(times),
        float(len(items)),
        0.0,
        unit,
        len(items),
        ids,
        indices,
        summary,
        source=source,
        details=details,
        evidence=evidence,
        search=_search(items),
    )


def _tally(values: Iterable[str]) -> str:
    """ "a ×3, b ×1": most frequent first, ties by name."""
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{value} ×{count}" for value, count in ranked)


def _denials(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    by_caller: dict[tuple[str, str], list[tuple[int, AuditEvent]]] = defaultdict(list)
    for index, event in calls:
        if _denied(event):
            by_caller[(_who(event), _service(event))].append((index, event))
    found = []
    for (who, service), items in by_caller.items():
        if len(items) < MIN_DENIALS:
            continue
        policies = sorted({e.authz.policy or "?" for _, e in items if e.authz})
        summary = (
            f"{who} was denied {len(items)} times calling {service} (policy {', '.join(policies)})"
        )
        requests = _tally(f"{e.http.method} {e.http.path}" if e.http else e.kind for _, e in items)
        details = (("policy", ", ".join(policies)), ("requests", requests[:500]))
        found.append(
            _counted(
                "repeated_denials",
                who,
                service,
                items,
                "denials",
                summary,
                source=_caller_service(items[0][1]),
                details=details,
            )
        )
    return found


def _plaintext(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    """Calls without mutual TLS to a service whose baseline is (almost) all mTLS, one finding
    per caller. A service that takes plaintext as its norm (a PERMISSIVE edge listener) is
    not flagged: nothing there departs from what it usually accepts."""
    by_service: dict[str, list[tuple[int, AuditEvent]]] = defaultdict(list)
    for item in calls:
        by_service[_service(item[1])].append(item)
    found = []
    for service, items in by_service.items():
        base = [e for _, e in items if e.time_ns < grid.baseline_end]
        if not base:
            continue
        share = sum(1 for e in base if e.tls is not None and e.tls.mutual) / len(base)
        if share < MTLS_NORM:
            continue
        by_caller: dict[str, list[tuple[int, AuditEvent]]] = defaultdict(list)
        for index, event in items:
            if event.tls is None or not event.tls.mutual:
                by_caller[_who(event)].append((index, event))
        for who, plain in by_caller.items():
            summary = (
                f"{len(plain)} plaintext calls from {who} to {service}, where {share:.0%} use mTLS"
            )
            found.append(
                _counted(
                    "plaintext_calls",
                    who,
                    service,
                    plain,
                    "plaintext calls",
                    summary,
                    source=_caller_service(plain[0][1]),
                    details=(("baseline_mtls_share", f"{share:.3f}"),),
                )
            )
    return found


def _authn_failures(failures: Sequence[tuple[int, AuditEvent]]) -> list[Finding]:
    """Refused handshakes and credentials, per source (its SPIFFE ID when it presented one
    that was read, else its address) and service, with the reasons."""
    by_source: dict[tuple[str, str], list[tuple[int, AuditEvent]]] = defaultdict(list)
    for index, event in failures:
        src = event.source
        who = (src.identity or src.ip if src else None) or "unknown"
        by_source[(who, _service(event))].append((index, event))
    found = []
    for (who, service), items in by_source.items():
        if len(items) < MIN_AUTHN_FAILURES:
            continue
        reasons = sorted({e.error.type for _, e in items if e.error})
        summary = f"{len(items)} refused handshakes from {who} at {service} ({', '.join(reasons)})"
        certs = sorted(
            {e.tls.peer_cert_sha256 for _, e in items if e.tls and e.tls.peer_cert_sha256}
        )
        details = [("reasons", _tally(e.error.type if e.error else "?" for _, e in items))]
        if certs:
            details.append(("presented_cert_sha256", ", ".join(certs[:5])))
        found.append(
            _counted(
                "failed_authentication",
                who,
                service,
                items,
                "refused handshakes",
                summary,
                details=tuple(details),
            )
        )
    return found
