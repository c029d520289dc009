"""How one request travelled: the call tree of a trace, across services, from the audit events.

Place in the house: analysis/, a pure core. `build` takes the events that share a trace id
(`load` is the one SQL read) and returns the tree the CLI draws (`auditmesh trace`) and the
API returns (`GET /v1/traces/{id}`, as `to_json`).

How the tree is made (W3C Trace Context, the sidecar's proxy/tracing.py): every sidecar opens a
new span for each request it forwards, under the span in the incoming `traceparent`. So one hop
A → B reported by both sides is two events: A's outbound event (span S) and B's inbound event
(parent span S). Those two are merged into one `Call` node; a side that reported alone is a
node by itself. A node's parent is the node holding the span its earliest side names as parent
(A's outbound event's parent span is the span of the call that reached A). Nodes whose parent is
not among the events are roots; a cycle (possible only in forged data) is cut at its earliest
node. Children and roots are ordered by start time, then ledger index.

A node's figures: the caller's view where there is one (status, duration: what A saw, network
and B included), the callee's authorization decision (enforcement happens inbound), and the
callee's own identity (the inbound side knows who proved which SPIFFE ID).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from auditmesh.analysis.query import (
    MIN_TRACE_PREFIX,
    TRACE_OR_PREFIX,
    UNKNOWN,
    SqlReader,
    trace_range,
)
from auditmesh.events import AuditEvent, Peer, decode_event


@dataclass(frozen=True, slots=True)
class Side:
    index: int
    event: AuditEvent


@dataclass(slots=True)
class Call:
    """One hop: its outbound and/or inbound side, and the calls made while serving it."""

    outbound: Side | None
    inbound: Side | None
    children: list[Call] = field(default_factory=list)
    cut: bool = False  # its parent is MAX_DEPTH levels down: drawn as a root instead

    @property
    def sides(self) -> tuple[Side, ...]:
        return tuple(s for s in (self.outbound, self.inbound) if s is not None)

    @property
    def first(self) -> Side:
        """The side that saw the call first: the caller's when it reported."""
        return self.sides[0]

    @property
    def time_ns(self) -> int:
        return min(int(s.event.time_ns) for s in self.sides)

    @property
    def duration_us(self) -> int:
        return self.first.event.duration_us

    @property
    def source(self) -> Peer | None:
        if self.inbound is not None and self.inbound.event.source is not None:
            return self.inbound.event.source
        return self.first.event.source

    @property
    def destination(self) -> Peer | None:
        if self.inbound is not None and self.inbound.event.destination is not None:
            return self.inbound.event.destination
        return self.first.event.destination

    @property
    def status(self) -> int | None:
        for side in self.sides:
            if side.event.http is not None and side.event.http.status is not None:
                return side.event.http.status
        return None

    @property
    def authz_side(self) -> Side | None:
        for side in (self.inbound, self.outbound):
            if side is not None and side.event.authz is not None:
                return side
        return None

    @property
    def outcome(self) -> str:
        outcomes = {s.event.outcome for s in self.sides}
        return "failure" if "failure" in outcomes else self.first.event.outcome

    def sort_key(self) -> tuple[int, int]:
        return self.time_ns, min(s.index for s in self.sides)


def peer_name(peer: Peer | None) -> str:
    """A service's name as people say it: service, else SPIFFE ID, else address, else
    `unknown`, the service graph's name of such a party (which `query --source` takes)."""
    if peer is None:
        return UNKNOWN
    if peer.service:
        return peer.service
    if peer.identity:
        return peer.identity
    if peer.ip:
        return peer.ip if peer.port is None else f"{peer.ip}:{peer.port}"
    return UNKNOWN


def _pair(rows: Sequence[Side]) -> list[Call]:
    """Inbound/outbound pairs of the same hop become one call; the rest stay single."""
    outbound_by_span: dict[str, Side] = {}
    for side in rows:
        trace = side.event.trace
        if side.event.direction == "outbound" and trace is not None and trace.span_id:
            outbound_by_span.setdefault(trace.span_id, side)
    calls: list[Call] = []
    paired: set[int] = set()
    by_outbound: dict[int, Call] = {}
    for side in rows:
        event, trace = side.event, side.event.trace
        if event.direction == "inbound" and trace is not None and trace.parent_span_id:
            partner = outbound_by_span.get(trace.parent_span_id)
            if partner is not None and partner.index not in paired:
                paired.add(partner.index)
                call = Call(partner, side)
                by_outbound[partner.index] = call
                calls.append(call)
                continue
        if event.direction == "outbound":
            continue  # placed below, once every inbound side has had its chance to pair
        calls.append(Call(None, side) if event.direction == "inbound" else Call(side, None))
    for side in rows:
        if side.event.direction == "outbound" and side.index not in paired:
            calls.append(Call(side, None))
    return calls


def _parent_span(call: Call) -> str | None:
    trace = call.first.event.trace
    return None if trace is None else trace.parent_span_id


def build(rows: Iterable[tuple[int, AuditEvent]]) -> list[Call]:
    """The roots of the call tree(s) of one trace's events (see the module docstring)."""
    sides = sorted((Side(i, e) for i, e in rows), key=lambda s: s.index)
    calls = sorted(_pair(sides), key=Call.sort_key)
    owner: dict[str, Call] = {}
    for call in calls:
        for side in call.sides:
            trace = side.event.trace
            if trace is not None and trace.span_id:
                owner.setdefault(trace.span_id, call)
    parent: dict[int, Call | None] = {}
    for call in calls:
        span = _parent_span(call)
        up = None if span is None else owner.get(span)
        parent[id(call)] = None if up is call else up
    for call in calls:  # cut cycles at their earliest node (calls are in start order)
        seen: set[int] = set()
        node: Call | None = call
        while node is not None and id(node) not in seen:
            seen.add(id(node))
            node = parent[id(node)]
        if node is not None:  # walked into a loop: cut it where it starts, earliest first
            loop = [node]
            step = parent[id(node)]
            while step is not None and step is not node:
                loop.append(step)
                step = parent[id(step)]
            parent[id(min(loop, key=Call.sort_key))] = None
    roots: list[Call] = []
    for call in calls:
        up = parent[id(call)]
        (roots if up is None else up.children).append(call)
    return _cap_depth(roots)


MAX_DEPTH = 64
"""Nesting kept in one tree. Real call chains are far shallower; a forged chain of thousands
of hops would otherwise exhaust the recursion of JSON encoders and of the drawing."""


def _cap_depth(roots: list[Call]) -> list[Call]:
    """The children of calls at MAX_DEPTH become roots of their own, marked `cut`."""
    out = list(roots)
    cut = False
    for root in out:  # grows while it is walked: cut subtrees are walked as roots in turn
        stack = [(root, 0)]
        while stack:
            call, depth = stack.pop()
            if depth < MAX_DEPTH:
                stack.extend((child, depth + 1) for child in call.children)
                continue
            for child in call.children:
                child.cut = cut = True
            out.extend(call.children)
            call.children = []
    return sorted(out, key=Call.sort_key) if cut else out


def walk(roots: Sequence[Call]) -> Iterable[tuple[int, Call]]:
    """(depth, call) in drawing order."""
    stack = [(0, call) for call in reversed(roots)]
    while stack:
        depth, call = stack.pop()
        yield depth, call
        stack.extend((depth + 1, child) for child in reversed(call.children))


def _side_json(side: Side | None) -> dict[str, Any] | None:
    if side is None:
        return None
    event = side.event
    return {
        "index": side.index,
        "id": event.id,
        "reporter": event.reporter,
        "time_ns": int(event.time_ns),
        "duration_us": event.duration_us,
        "status": None if event.http is None else event.http.status,
        "outcome": event.outcome,
    }


def call_json(call: Call) -> dict[str, Any]:
    first = call.first.event
    authz = call.authz_side
    error = next((s.event.error for s in call.sides if s.event.error is not None), None)
    return {
        "source": peer_name(call.source),
        "source_identity": None if call.source is None else call.source.identity,
        "destination": peer_name(call.destination),
        "destination_identity": None if call.destination is None else call.destination.identity,
        "kind": first.kind,
        "method": None if first.http is None else first.http.method,
        "path": None if first.http is None else first.http.path,
        "status": call.status,
        "decision": None
        if authz is None or authz.event.authz is None
        else authz.event.authz.decision,
        "policy": None if authz is None or authz.event.authz is None else authz.event.authz.policy,
        "mtls": any(s.event.tls is not None and s.event.tls.mutual for s in call.sides),
        "time_ns": call.time_ns,
        "duration_us": call.duration_us,
        "outcome": call.outcome,
        "error": None if error is None else {"type": error.type, "message": error.message},
        "outbound": _side_json(call.outbound),
        "inbound": _side_json(call.inbound),
        "children": [call_json(child) for child in call.children],
        "cut": call.cut,
    }


def to_json(trace_id: str, roots: Sequence[Call], *, truncated: bool = False) -> dict[str, Any]:
    """The trace as the API serves it; `truncated`: more than MAX_TRACE_EVENTS events carry
    its id and only the first (in ledger order) are shown."""
    calls = [call for _, call in walk(roots)]
    events = sum(len(call.sides) for call in calls)
    start = min((c.time_ns for c in calls), default=0)
    end = max((c.time_ns + c.duration_us * 1000 for c in calls), default=0)
    return {
        "trace_id": trace_id,
        "events": events,
        "calls": len(calls),
        "time_ns": start,
        "duration_us": (end - start) // 1000,
        "failures": sum(call.outcome == "failure" for call in calls),
        "denials": sum(
            1
            for call in calls
            if (a := call.authz_side) is not None
            and a.event.authz is not None
            and a.event.authz.decision == "deny"
        ),
        "truncated": truncated,
        "cut_calls": sum(call.cut for call in calls),
        "roots": [call_json(root) for root in roots],
    }


MAX_TRACE_EVENTS = 10_000


class TraceIdError(ValueError):
    """Not a trace id or a prefix of one, or a prefix that more than one trace shares."""


def resolve(reader: SqlReader, text: str) -> str | None:
    """The trace id `text` names: all 32 hex digits (W3C Trace Context §3.2.2.3), or the first
    8 or more that exactly one stored trace id starts with; None when none does."""
    wanted = text.strip().lower()
    if not TRACE_OR_PREFIX.fullmatch(wanted):
        raise TraceIdError(
            f"{text!r} is not a trace id: give its 32 hex digits, or the first "
            f"{MIN_TRACE_PREFIX} or more (as `auditmesh query` shows them)"
        )
    if len(wanted) == 32:
        return wanted
    rows = reader.query(  # a range of the trace-id index, not a scan of the table
        "SELECT DISTINCT trace_id FROM events WHERE trace_id >= ? AND trace_id < ?"
        " ORDER BY trace_id LIMIT 4",
        trace_range(wanted),
    )
    found = [str(row[0]) for row in rows]
    if len(found) > 1:
        more = ", …" if len(found) > 3 else ""
        raise TraceIdError(
            f"{wanted} begins more than one trace id ({', '.join(found[:3])}{more}): give more "
            "digits"
        )
    return found[0] if found else None


def not_found(text: str) -> str:
    """What to say when `trace_json` found nothing for `text`."""
    wanted = text.strip().lower()
    if len(wanted) < 32:
        return f"no trace id stored begins with {wanted}"
    return f"no event carries trace id {wanted}"


def load(
    reader: SqlReader, trace_id: str, limit: int = MAX_TRACE_EVENTS
) -> list[tuple[int, AuditEvent]]:
    """SQL: the events of one trace, in ledger order (at most `limit`; ask for one more to
    learn whether there are more)."""
    rows = reader.query(
        "SELECT idx, data FROM events WHERE trace_id = ? ORDER BY idx LIMIT ?", (trace_id, limit)
    )
    return [(int(i), decode_event(bytes(d))) for i, d in rows]


def trace_json(reader: SqlReader, text: str) -> dict[str, Any] | None:
    """`to_json` of the first MAX_TRACE_EVENTS events of the trace `text` names (`resolve`),
    flagged `truncated` when more carry its id; None when none does."""
    trace_id = resolve(reader, text)
    if trace_id is None:
        return None
    rows = load(reader, trace_id, MAX_TRACE_EVENTS + 1)
    if not rows:
        return None
    truncated = len(rows) > MAX_TRACE_EVENTS
    return to_json(trace_id, build(rows[:MAX_TRACE_EVENTS]), truncated=truncated)
