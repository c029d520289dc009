"""Where the console draws each service: the service graph's layout, computed by networkx.

Place in the house: a pure helper of the web console (`console/routes.py` serves it at
`POST /console/api/layout`); it knows nothing of events, only names and edges, so the
browser can lay out whatever `GET /v1/graph` returned without a second read of the ledger.

Callers on the left, callees on the right, the way service maps are read: each service's
column is its topological generation in the graph's condensation (services calling each
other in a cycle share a column), and `networkx.multipartite_layout` places the columns.
Within a column the order comes from three barycentre sweeps (Sugiyama's crossing reduction:
a service sits near the mean row of its callers, then of its callees), deterministic for a
given graph. A graph without
any edge falls back to `networkx.spring_layout` with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

Point = tuple[float, float]

SEED = 7
MAX_NODES = 500


class LayoutError(ValueError):
    """The graph cannot be laid out (too large, or an edge names no service)."""


def _columns(graph: nx.DiGraph[str]) -> list[list[str]]:
    """Services grouped by topological generation of the strongly connected components."""
    condensed = nx.condensation(graph)
    columns: list[list[str]] = []
    for generation in nx.topological_generations(condensed):
        members = [m for c in generation for m in condensed.nodes[c]["members"]]
        columns.append(sorted(members))
    return columns


def _rows(column: list[str]) -> dict[str, float]:
    """Each service's row in its column, spread over [0, 1]; a lone service sits mid-height."""
    if len(column) == 1:
        return {column[0]: 0.5}
    return {name: position / (len(column) - 1) for position, name in enumerate(column)}


def _order(graph: nx.DiGraph[str], columns: list[list[str]]) -> list[list[str]]:
    """Barycentre sweeps (Sugiyama's crossing reduction), down, up and down again: each
    service moves to the mean row of its neighbours in the column it is compared with."""
    row: dict[str, float] = {}
    for column in columns:
        row.update(_rows(column))
    ordered = [list(column) for column in columns]
    for sweep in (1, -1, 1):
        indices = range(len(ordered)) if sweep == 1 else range(len(ordered) - 1, -1, -1)
        for number in indices:
            neighbours = graph.predecessors if sweep == 1 else graph.successors

            def key(name: str, neighbours: Any = neighbours) -> tuple[float, str]:
                rows = [row[n] for n in neighbours(name) if n in row and n not in (name,)]
                return (sum(rows) / len(rows) if rows else row[name], name)

            ordered[number] = sorted(ordered[number], key=key)
            row.update(_rows(ordered[number]))
    return ordered


def layout(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, Point]:
    """Positions in the unit square (x: 0 = leftmost column, y: 0 = top) for every node."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(sorted(set(nodes)))
    for source, dest in edges:
        if source not in graph or dest not in graph:
            raise LayoutError(f"edge {source} → {dest} names a service not in the node list")
        if source != dest:
            graph.add_edge(source, dest)
    if len(graph) > MAX_NODES:
        raise LayoutError(f"{len(graph)} services: the console lays out at most {MAX_NODES}")
    if len(graph) == 0:
        return {}
    if graph.number_of_edges() == 0:
        return _normalise(nx.spring_layout(graph, seed=SEED))
    columns = _order(graph, _columns(graph))
    subsets = {number: column for number, column in enumerate(columns)}
    return _normalise(nx.multipartite_layout(graph, subset_key=subsets, align="vertical"))


def _normalise(positions: Mapping[str, Any]) -> dict[str, Point]:
    """Scale networkx's coordinates (centred on 0) into [0, 1]²; the first of a column on top."""
    xs = [float(p[0]) for p in positions.values()]
    ys = [float(p[1]) for p in positions.values()]

    def scale(value: float, low: float, high: float) -> float:
        return 0.5 if high - low < 1e-9 else round((value - low) / (high - low), 4)

    return {
        name: (scale(float(p[0]), min(xs), max(xs)), scale(float(p[1]), min(ys), max(ys)))
        for name, p in positions.items()
    }
