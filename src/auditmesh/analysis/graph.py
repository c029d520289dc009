"""Who calls whom, how much, how well: the service graph (`auditmesh graph`, `GET /v1/graph`).

Place in the house: analysis/. `build` is pure: rollup rows (rollup.py) in, a `Graph` out, with
one `Edge` per (source service → destination service): requests and rate, failed calls and the
error rate (failures other than policy denials), denials, the share of mutual-TLS calls, request
and response bytes, and p50/p95/p99 latency (`duration_us`, nearest rank, truncated to two
significant digits by the rollup's buckets). `compute` is the I/O edge: bring the rollup up to
date, read the window's rows, build. `to_json` and `to_dot` render; `rate_unit` and
`format_rate_in` give the rates of one table (the CLI's, the DOT picture's) one unit, by the
console's rule (static/dom.js).

Each call is counted once, preferring the inbound event when both sides reported it (rollup.py
says exactly how). The window is whole minutes, the rollup's resolution: `since` rounds down
to the start of its minute, `until` up to the end of its minute; `rate_per_s` divides by the
window's length (since → until or now; without `since`, the minutes that hold calls).

An edge's traffic may fill only part of the window (an incident's two minutes in the last
24 hours), and the window's average then reads as if the edge were nearly idle. So each edge
also has its active span, `active_from_ns` → `active_to_ns`: from the start of the first minute
holding one of its calls to the end of the last, and `active_rate_per_s`, its calls over that
span: the rate while it had traffic, to the rollup's resolution of whole minutes (a ten-second
burst reads as its minute's rate). The current minute, still running in a window that ends
now, counts whole too, so the span may end after the window (cut at now, one call 28 s into
the minute would read as 2.1 a minute). That is the rate the console (which divides the
JSON's `requests` by `active_seconds`), the CLI's table and the DOT picture show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from auditmesh.analysis.query import UNKNOWN as UNKNOWN  # no identity, no service: "unknown"
from auditmesh.analysis.rollup import MINUTE_NS, Rollup, RollupRow


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    source_namespace: str
    dest: str
    dest_namespace: str
    requests: int
    failed: int
    denied: int
    mtls: int
    request_bytes: int
    response_bytes: int
    p50_us: int
    p95_us: int
    p99_us: int
    rate_per_s: float
    active_from_ns: int = 0
    active_to_ns: int = 0

    @property
    def active_seconds(self) -> float:
        """The length of the span from the edge's first minute with calls to its last."""
        return max(0, self.active_to_ns - self.active_from_ns) / 1e9

    @property
    def active_rate_per_s(self) -> float:
        """Calls per second over the active span; the window's average when the span is
        unknown (the JSON of a server from before active spans)."""
        seconds = self.active_seconds
        return self.requests / seconds if seconds else self.rate_per_s

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    @property
    def mtls_share(self) -> float:
        return self.mtls / self.requests if self.requests else 0.0

    @property
    def plaintext(self) -> int:
        return self.requests - self.mtls


@dataclass(frozen=True, slots=True)
class Graph:
    from_ns: int | None
    to_ns: int | None
    edges: tuple[Edge, ...] = field(default=())

    @property
    def seconds(self) -> float:
        if self.from_ns is None or self.to_ns is None:
            return 0.0
        return max(0, self.to_ns - self.from_ns) / 1e9

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.edges)


def percentile(histogram: list[tuple[int, int]], total: int, p: int) -> int:
    """Nearest-rank percentile (the ⌈p·n/100⌉-th smallest) of sorted (value, count) pairs."""
    if total <= 0:
        return 0
    rank = max(1, -(-p * total // 100))
    seen = 0
    for value, count in histogram:
        seen += count
        if seen >= rank:
            return value
    return histogram[-1][0]


Span = tuple[int, int]  # the first and last minute that hold calls of an edge


def active_span(minutes: Span | None, from_ns: int | None, to_ns: int | None) -> Span:
    """[from, to) in ns of an edge whose calls fall in `minutes`: those minutes, whole (the
    last may still be running: its end is after the window's, now), from no earlier than the
    window's start; the window itself when the minutes are unknown (or (0, 0), no rate)."""
    if minutes is None:
        return (from_ns or 0, to_ns or 0)
    start, end = minutes[0] * MINUTE_NS, (minutes[1] + 1) * MINUTE_NS
    if from_ns is not None:
        start = max(start, from_ns)
    return (start, end)


def build(
    rows: Iterable[RollupRow],
    from_ns: int | None,
    to_ns: int | None,
    spans: Mapping[tuple[str, str, str, str], Span] | None = None,
) -> Graph:
    """The graph of rollup rows (per edge and latency bucket) over the window [from, to);
    `spans` (`Rollup.read`) gives each edge's active span, else it is the window."""
    sums: dict[tuple[str, str, str, str], list[int]] = {}
    latencies: dict[tuple[str, str, str, str], list[tuple[int, int]]] = {}
    for sns, src, dns, dst, latency, calls, failed, denied, mtls, req, resp in rows:
        key = (sns, src, dns, dst)
        total = sums.setdefault(key, [0, 0, 0, 0, 0, 0])
        for position, value in enumerate((calls, failed, denied, mtls, req, resp)):
            total[position] += int(value)
        latencies.setdefault(key, []).append((int(latency), int(calls)))
    seconds = 0.0 if from_ns is None or to_ns is None else max(0, to_ns - from_ns) / 1e9
    edges = []
    for (sns, src, dns, dst), (calls, failed, denied, mtls, req, resp) in sums.items():
        if calls <= 0:
            continue
        histogram = sorted(latencies[(sns, src, dns, dst)])
        p50, p95, p99 = (percentile(histogram, calls, p) for p in (50, 95, 99))
        edges.append(
            Edge(
                src or UNKNOWN,
                sns,
                dst or UNKNOWN,
                dns,
                calls,
                failed,
                denied,
                mtls,
                req,
                resp,
                p50,
                p95,
                p99,
                calls / seconds if seconds else 0.0,
                *active_span((spans or {}).get((sns, src, dns, dst)), from_ns, to_ns),
            )
        )
    edges.sort(key=lambda e: (-e.requests, e.source, e.dest))
    return Graph(from_ns, to_ns, tuple(edges))


def compute(rollup: Rollup, *, since_ns: int | None, until_ns: int | None, now_ns: int) -> Graph:
    """I/O: catch the rollup up with the ledger, then build the graph of the window from one
    state of the rollup (its rows, spans and extent read together)."""
    rollup.catch_up()
    first = None if since_ns is None else since_ns // MINUTE_NS
    end = None if until_ns is None else -(-until_ns // MINUTE_NS)
    snapshot = rollup.read(first, end)
    if since_ns is not None:
        from_ns: int | None = first * MINUTE_NS if first is not None else None
        # the rollup counts whole minutes: the window shown (and rates) is the one counted
        to_ns: int | None = end * MINUTE_NS if end is not None else now_ns
    else:
        extent = snapshot.extent
        from_ns = None if extent is None else extent[0] * MINUTE_NS
        to_ns = None if extent is None else (extent[1] + 1) * MINUTE_NS
        if end is not None and to_ns is not None:
            to_ns = min(to_ns, end * MINUTE_NS)
    return build(snapshot.rows, from_ns, to_ns, snapshot.spans)


# -- rendering ---------------------------------------------------------------------------


def node_names(graph: Graph) -> dict[tuple[str, str], str]:
    """(namespace, service) → the name shown: the service, qualified as `service.namespace`
    only when the graph spans several namespaces. A caller known only by its SPIFFE ID is
    shown as that ID, which names its namespace already (`…/ns/shop/sa/web`).

    Two nodes never share a name. Where the short names of several nodes are one (a service
    in a namespace and one of that name in none, the unknown callers of two namespaces, a
    service named `a.b` and the service `a` of the namespace `b`, one SPIFFE ID reported in
    two namespaces), those nodes are qualified by their namespace (`db.shop`, `unknown.shop`),
    and where that is not enough, named with it in words: `a.b (no namespace)`,
    `spiffe://…/sa/web (namespace bank)`."""
    nodes = {(e.source_namespace, e.source) for e in graph.edges}
    nodes |= {(e.dest_namespace, e.dest) for e in graph.edges}
    qualify = len({ns for ns, _ in nodes if ns}) > 1
    names = {node: _short_name(node, qualify) for node in nodes}
    for explicit in (False, True):
        shared = _shared(names)
        if not shared:
            break
        for node in shared:
            names[node] = _explicit_name(node) if explicit else _qualified_name(node)
    return names


def _short_name(node: tuple[str, str], qualify: bool) -> str:
    ns, svc = node
    return f"{svc}.{ns}" if qualify and ns and not svc.startswith("spiffe://") else svc


def _qualified_name(node: tuple[str, str]) -> str:
    """`service.namespace` (as `auditmesh query` reads it); a SPIFFE ID or a node of no
    namespace cannot say more this way."""
    ns, svc = node
    if svc.startswith("spiffe://"):
        return _explicit_name(node)
    return f"{svc}.{ns}" if ns else svc


def _explicit_name(node: tuple[str, str]) -> str:
    ns, svc = node
    return f"{svc} (namespace {ns})" if ns else f"{svc} (no namespace)"


def _shared(names: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """The nodes whose name another node has too."""
    holders: dict[str, list[tuple[str, str]]] = {}
    for node, name in names.items():
        holders.setdefault(name, []).append(node)
    return sorted(node for group in holders.values() if len(group) > 1 for node in group)


def to_json(graph: Graph) -> dict[str, Any]:
    names = node_names(graph)
    inbound: dict[str, int] = {}
    outbound: dict[str, int] = {}
    edges = []
    for e in graph.edges:
        source, dest = names[(e.source_namespace, e.source)], names[(e.dest_namespace, e.dest)]
        outbound[source] = outbound.get(source, 0) + e.requests
        inbound[dest] = inbound.get(dest, 0) + e.requests
        edges.append(
            {
                "source": source,
                "dest": dest,
                "source_service": e.source,
                "source_namespace": e.source_namespace or None,
                "dest_service": e.dest,
                "dest_namespace": e.dest_namespace or None,
                "requests": e.requests,
                "rate_per_s": round(e.rate_per_s, 3),
                "active_from_ns": e.active_from_ns,
                "active_to_ns": e.active_to_ns,
                "active_seconds": e.active_seconds,
                "active_rate_per_s": round(e.active_rate_per_s, 3),
                "errors": e.failed,
                "error_rate": round(e.error_rate, 4),
                "denials": e.denied,
                "mtls": e.mtls,
                "mtls_share": round(e.mtls_share, 4),
                "plaintext": e.plaintext,
                "p50_us": e.p50_us,
                "p95_us": e.p95_us,
                "p99_us": e.p99_us,
                "request_bytes": e.request_bytes,
                "response_bytes": e.response_bytes,
                "bytes": e.request_bytes + e.response_bytes,
            }
        )
    nodes = [
        {
            "name": name,
            "service": svc,
            "namespace": ns or None,
            "inbound": inbound.get(name, 0),
            "outbound": outbound.get(name, 0),
        }
        for (ns, svc), name in sorted(names.items(), key=lambda item: item[1])
    ]
    return {
        "window": {"from_ns": graph.from_ns, "to_ns": graph.to_ns, "seconds": graph.seconds},
        "requests": graph.requests,
        "nodes": nodes,
        "edges": edges,
    }


def from_json(body: dict[str, Any]) -> Graph:
    """The `Graph` back from `to_json` (what a client of `GET /v1/graph` renders)."""
    edges = tuple(
        Edge(
            e["source_service"],
            e["source_namespace"] or "",
            e["dest_service"],
            e["dest_namespace"] or "",
            e["requests"],
            e["errors"],
            e["denials"],
            e["mtls"],
            e["request_bytes"],
            e["response_bytes"],
            e["p50_us"],
            e["p95_us"],
            e["p99_us"],
            e["rate_per_s"],
            e.get("active_from_ns", 0),
            e.get("active_to_ns", 0),
        )
        for e in body["edges"]
    )
    window = body["window"]
    return Graph(window["from_ns"], window["to_ns"], edges)


# Error-rate bins, as the web console draws them: (upper bound, colour).
ERROR_COLOURS = ((0.01, "#2f9e6b"), (0.05, "#b59a12"), (0.2, "#e07b00"), (math.inf, "#c62828"))
# Denied calls, as the console marks them (console.css --denied): no error bin's colour, since
# denials are not errors (a wholly denied edge has 0% errors).
DENIAL_COLOUR = "#6b2fa3"


def error_colour(error_rate: float) -> str:
    return next(colour for bound, colour in ERROR_COLOURS if error_rate < bound)


@dataclass(frozen=True, slots=True)
class RateUnit:
    name: str
    per: int  # seconds in the unit


RATE_UNITS = (RateUnit("s", 1), RateUnit("min", 60), RateUnit("h", 3600), RateUnit("day", 86400))


def rate_unit(rates: Iterable[float]) -> RateUnit:
    """The unit the largest of `rates` (per second) reads at least 1 in: one table shows all
    its rates in it (the console's rule, static/dom.js `rateUnit`)."""
    largest = max((r for r in rates if math.isfinite(r)), default=0.0)
    return next((u for u in RATE_UNITS if largest * u.per >= 1), RATE_UNITS[-1])


def format_rate_in(per_s: float, unit: RateUnit) -> str:
    """A rate in `unit`: whole above 100, one decimal above 1, two significant digits below,
    never in exponent form and never a non-zero rate as zero (static/dom.js `fmtRateIn`)."""
    if per_s <= 0:
        return f"0/{unit.name}"
    value = per_s * unit.per
    if value >= 100:
        return f"{math.floor(value + 0.5)}/{unit.name}"
    if value >= 0.995:
        return f"{value:.1f}/{unit.name}"
    if value >= 0.01:
        return f"{value:#.2g}/{unit.name}"
    return f"< 0.01/{unit.name}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_duration(us: int) -> str:
    if us >= 1_000_000:
        return f"{us / 1_000_000:.2g} s" if us < 10_000_000 else f"{us // 1_000_000} s"
    if us >= 1000:
        return f"{us / 1000:.2g} ms" if us < 10_000 else f"{us // 1000} ms"
    return f"{us} µs"


# What the DOT picture's rates are, said under it.
RATE_NOTE = (
    "rates while active: an edge's calls over the minutes from its first call to its last, "
    "not the window's average; denied calls are not errors"
)


def to_dot(graph: Graph) -> str:
    """Graphviz DOT: colour by error rate, pen width by volume, dashed when some calls were
    plaintext; an edge with denied calls is cased in the denial colour, its label in that
    colour with the count. Rates are over each edge's active span, in one unit."""
    names = node_names(graph)
    most = max((e.requests for e in graph.edges), default=1)
    unit = rate_unit(e.active_rate_per_s for e in graph.edges)
    lines = [
        "digraph auditmesh {",
        "  rankdir=LR;",
        f'  graph [label={_quote(RATE_NOTE)}, fontname="Helvetica", fontsize=10];',
        '  node [shape=box, style="rounded", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for name in sorted(set(names.values())):
        lines.append(f"  {_quote(name)};")
    for e in graph.edges:
        source, dest = names[(e.source_namespace, e.source)], names[(e.dest_namespace, e.dest)]
        label = (
            f"{e.requests} req, {format_rate_in(e.active_rate_per_s, unit)} while active\\n"
            f"err {100 * e.error_rate:.1f}%, p95 {format_duration(e.p95_us)}"
        )
        colour = error_colour(e.error_rate)
        if e.denied:  # a casing: the error colour between two lines of the denial colour
            colour = f"{DENIAL_COLOUR}:{colour}:{DENIAL_COLOUR}"
        attributes = [
            f'color="{colour}"',
            f"penwidth={1 + 4 * math.log1p(e.requests) / math.log1p(most):.2f}",
        ]
        if e.plaintext:
            attributes.append("style=dashed")
            label += f"\\n{e.plaintext} plaintext"
        if e.denied:
            attributes.append(f'fontcolor="{DENIAL_COLOUR}"')
            label += f"\\n{e.denied} denied"
        attributes.insert(0, f'label="{label}"')
        lines.append(f"  {_quote(source)} -> {_quote(dest)} [{', '.join(attributes)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
