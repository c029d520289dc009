"""Findings: which identity misbehaves, when, by how much, with the events that show it.

Pure: `detect(events)` takes (ledger index, AuditEvent) pairs and returns findings; time is
the events' own. The range is cut into buckets (1/20 of it, at least 1 s, at most 60 s);
the first quarter is the baseline each identity and each edge is compared with. A call
is one inbound http/tcp event (the callee's sidecar saw it); authn failures are counted
separately. Thresholds are named below with the reason for each: a finding needs both a
large ratio against the baseline and an absolute floor, so quiet edges do not alarm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from auditmesh.events import AuditEvent

BASELINE_SHARE = 0.25  # the earliest quarter of the range is what "normal" means
BUCKETS = 20  # the range is cut into this many buckets…
MIN_BUCKET_NS, MAX_BUCKET_NS = 1_000_000_000, 60_000_000_000  # …of 1 s to 1 min
ERROR_RATE_FACTOR = 3.0  # an error burst triples the baseline failure rate…
ERROR_RATE_MARGIN = 0.2  # …and adds 20 points to it (a 1 % baseline is not alarmed at 3 %)
MIN_ERRORS = 5  # …with at least this many failures in the bucket
VOLUME_FACTOR = 4.0  # excessive volume: 4× the baseline per bucket…
MIN_REQUESTS = 20  # …and at least 20 calls, or…
MIN_BYTES = 1_000_000  # …at least 1 MB of responses in the bucket
LATENCY_FACTOR = 5.0  # a p95 five times the baseline p95 (a loaded host easily triples it)…
MIN_LATENCY_CALLS = 10  # …over at least 10 calls, of at least…
MIN_LATENCY_US = 50_000  # …50 ms (scheduling noise is not a regression)…
MIN_LATENCY_BUCKETS = 3  # …lasting three buckets or more (a loaded moment is not a regression)
MIN_DENIALS = 3  # repeated denials: 3 or more for one caller
MIN_AUTHN_FAILURES = 3  # failed authentications: 3 or more from one source
MTLS_NORM = 0.9  # a service whose baseline calls are 90 %+ mTLS expects mTLS
EVIDENCE_CAP = 20  # event ids listed per finding (the count says how many there are)

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Finding:
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

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "responsible": self.responsible,
            "destination": self.destination,
            "window": {"start_ns": str(self.start_ns), "end_ns": str(self.end_ns)},
            "observed": round(self.observed, 3),
            "expected": round(self.expected, 3),
            "unit": self.unit,
            "count": self.count,
            "event_ids": list(self.event_ids),
            "indices": list(self.indices),
            "summary": self.summary,
        }


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


def _failed(event: AuditEvent) -> bool:
    denied = event.authz is not None and event.authz.decision == "deny"
    status = event.http.status if event.http else None
    return not denied and (event.outcome == "failure" or (status is not None and status >= 500))


def _p95(values: Sequence[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, (len(ordered) * 95) // 100)]) if ordered else 0.0


class _Grid:
    def __init__(self, start_ns: int, end_ns: int) -> None:
        span = max(end_ns - start_ns, 1)
        self.start = start_ns
        self.width = min(MAX_BUCKET_NS, max(MIN_BUCKET_NS, span // BUCKETS))
        self.baseline_end = start_ns + int(span * BASELINE_SHARE)
        self.count = span // self.width + 1

    def bucket(self, time_ns: int) -> int:
        return (time_ns - self.start) // self.width

    def bounds(self, bucket: int) -> tuple[int, int]:
        first = self.start + bucket * self.width
        return first, first + self.width

    @property
    def baseline_buckets(self) -> int:
        return max(1, (self.baseline_end - self.start) // self.width)


def _evidence(items: Sequence[tuple[int, AuditEvent]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    capped = items[:EVIDENCE_CAP]
    return tuple(e.id for _, e in capped), tuple(i for i, _ in capped)


def detect(events: Iterable[tuple[int, AuditEvent]]) -> list[Finding]:
    """All findings over these events, most severe and earliest first."""
    calls: list[tuple[int, AuditEvent]] = []
    authn: list[tuple[int, AuditEvent]] = []
    for index, event in events:
        if event.kind == "authn" and event.outcome == "failure":
            authn.append((index, event))
        elif event.kind in ("http", "tcp") and event.direction == "inbound":
            calls.append((index, event))
    if not calls and not authn:
        return []
    times = [e.time_ns for _, e in calls + authn]
    grid = _Grid(min(times), max(times))
    floods = _volume(calls, grid)
    bursts = _error_bursts(calls, grid)
    findings = [
        *bursts,
        *floods,
        *_attribute(_latency(calls, grid), [*floods, *bursts]),
        *_new_edges(calls, grid),
        *_denials(calls, grid),
        *_plaintext(calls, grid),
        *_authn_failures(authn),
    ]
    return sorted(findings, key=lambda f: (f.severity != "high", f.start_ns, f.kind))


def _cells(
    calls: Sequence[tuple[int, AuditEvent]], grid: _Grid, key: Callable[[AuditEvent], K]
) -> dict[K, dict[int, _Cell]]:
    table: dict[K, dict[int, _Cell]] = defaultdict(lambda: defaultdict(_Cell))
    for index, event in calls:
        cell = table[key(event)][grid.bucket(event.time_ns)]
        cell.calls.append((index, event))
        if _failed(event):
            cell.failures.append((index, event))
        if event.authz is not None and event.authz.decision == "deny":
            cell.denials.append((index, event))
        if event.http is not None and event.http.response_bytes:
            cell.response_bytes += event.http.response_bytes
        elif event.tcp is not None:
            cell.response_bytes += event.tcp.received_bytes
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


def _own_failures(calls: Sequence[tuple[int, AuditEvent]]) -> list[tuple[int, AuditEvent]]:
    """Calls minus failures passed on from a service further down the same trace: a
    frontend that answers 502 because catalog failed is not the one misbehaving."""
    failing_later: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for _, event in calls:
        if event.trace is not None and _failed(event):
            failing_later[event.trace.trace_id].append((event.time_ns, _service(event)))
    kept = []
    for item in calls:
        event = item[1]
        if event.trace is not None and _failed(event):
            here = _service(event)
            if any(
                t >= event.time_ns and s != here for t, s in failing_later[event.trace.trace_id]
            ):
                continue
        kept.append(item)
    return kept


def _error_bursts(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    found = []
    for service, cells in _cells(_own_failures(calls), grid, _service).items():
        base = [c for b, c in cells.items() if b < grid.baseline_buckets]
        base_calls = sum(len(c.calls) for c in base)
        base_rate = sum(len(c.failures) for c in base) / base_calls if base_calls else 0.0
        threshold = max(base_rate * ERROR_RATE_FACTOR, base_rate + ERROR_RATE_MARGIN)
        flagged = [
            b
            for b, c in cells.items()
            if b >= grid.baseline_buckets
            and len(c.failures) >= MIN_ERRORS
            and len(c.failures) / len(c.calls) >= threshold
        ]
        for run in _runs(flagged):
            failures = [f for b in run for f in cells[b].failures]
            total = sum(len(cells[b].calls) for b in run)
            rate = len(failures) / total
            ids, indices = _evidence(failures)
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
                )
            )
    return found


def _edge(event: AuditEvent) -> tuple[str, str, str]:
    return (_who(event), _caller_service(event), _service(event))


def _volume(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    found = []
    for (who, caller, service), cells in _cells(calls, grid, _edge).items():
        n = grid.baseline_buckets
        base_calls = sum(len(c.calls) for b, c in cells.items() if b < n) / n
        base_bytes = sum(c.response_bytes for b, c in cells.items() if b < n) / n
        flagged = [
            b
            for b, c in cells.items()
            if b >= n
            and (
                (len(c.calls) >= MIN_REQUESTS and len(c.calls) > VOLUME_FACTOR * base_calls)
                or (c.response_bytes >= MIN_BYTES and c.response_bytes > VOLUME_FACTOR * base_bytes)
            )
        ]
        for run in _runs(flagged):
            items = [x for b in run for x in cells[b].calls]
            sent = sum(cells[b].response_bytes for b in run) / len(run)
            ids, indices = _evidence(items)
            found.append(
                Finding(
                    "excessive_volume",
                    "medium",
                    who,
                    service,
                    grid.bounds(run[0])[0],
                    grid.bounds(run[-1])[1],
                    sent,
                    base_bytes,
                    "response bytes per bucket",
                    len(items),
                    ids,
                    indices,
                    f"{caller} → {service}: {len(items) / len(run):.0f} calls and "
                    f"{sent / 1e6:.1f} MB per {grid.width / 1e9:.0f} s against a baseline of "
                    f"{base_calls:.1f} calls and {base_bytes / 1e6:.2f} MB",
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
            ids, indices = _evidence(items)
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
                )
            )
    return found


def _attribute(regressions: list[Finding], causes: list[Finding]) -> list[Finding]:
    """A latency regression at a service that was flooded, or failing, at the same time is
    that cause's doing: the finding names the cause's responsible identity."""
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
            finding = replace(
                finding,
                responsible=cause.responsible,
                summary=f"{finding.summary}, while {cause.responsible} flooded {cause.destination}",
            )
        result.append(finding)
    return result


def _new_edges(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    first: dict[tuple[str, str, str], list[tuple[int, AuditEvent]]] = defaultdict(list)
    for item in calls:
        first[_edge(item[1])].append(item)
    found = []
    for (who, caller, service), items in first.items():
        start = items[0][1].time_ns
        if start < grid.baseline_end:
            continue
        ids, indices = _evidence(items)
        found.append(
            Finding(
                "new_edge",
                "medium",
                who,
                service,
                start,
                items[-1][1].time_ns,
                float(len(items)),
                0.0,
                "calls",
                len(items),
                ids,
                indices,
                f"{caller} started calling {service} ({len(items)} calls), never seen before",
            )
        )
    return found


def _counted(
    kind: str,
    who: str,
    service: str,
    items: Sequence[tuple[int, AuditEvent]],
    unit: str,
    summary: str,
) -> Finding:
    """A finding that is a count of events with no baseline (the expected count is zero)."""
    ids, indices = _evidence(items)
    first, last = items[0][1].time_ns, items[-1][1].time_ns
    return Finding(
        kind,
        "high",
        who,
        service,
        first,
        last,
        float(len(items)),
        0.0,
        unit,
        len(items),
        ids,
        indices,
        summary,
    )


def _denials(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    by_caller: dict[tuple[str, str], list[tuple[int, AuditEvent]]] = defaultdict(list)
    for index, event in calls:
        if event.authz is not None and event.authz.decision == "deny":
            by_caller[(_who(event), _service(event))].append((index, event))
    found = []
    for (who, service), items in by_caller.items():
        if len(items) < MIN_DENIALS:
            continue
        policies = sorted({e.authz.policy or "?" for _, e in items if e.authz})
        summary = (
            f"{who} was denied {len(items)} times calling {service} (policy {', '.join(policies)})"
        )
        found.append(_counted("repeated_denials", who, service, items, "denials", summary))
    return found


def _plaintext(calls: Sequence[tuple[int, AuditEvent]], grid: _Grid) -> list[Finding]:
    by_service: dict[str, list[tuple[int, AuditEvent]]] = defaultdict(list)
    for item in calls:
        by_service[_service(item[1])].append(item)
    found = []
    for service, items in by_service.items():
        base = [e for _, e in items if e.time_ns < grid.baseline_end]
        if not base:
            continue
        share = sum(1 for e in base if e.tls is not None and e.tls.mutual) / len(base)
        plain = [(i, e) for i, e in items if e.tls is None or not e.tls.mutual]
        if share < MTLS_NORM or not plain:
            continue
        summary = f"{len(plain)} plaintext calls to {service}, where {share:.0%} use mTLS"
        found.append(
            _counted(
                "plaintext_calls", _who(plain[0][1]), service, plain, "plaintext calls", summary
            )
        )
    return found


def _authn_failures(failures: Sequence[tuple[int, AuditEvent]]) -> list[Finding]:
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
        found.append(
            _counted("failed_authentication", who, service, items, "refused handshakes", summary)
        )
    return found
