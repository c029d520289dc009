"""console/layout.py and console/candidate.py: pure helpers behind the console's JSON routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.console.candidate import PolicyFile, load_candidate, stored_sets
from auditmesh.console.layout import LayoutError, layout
from auditmesh.demo.scenario import POLICIES

DEMO_EDGES = [
    ("outside", "frontend"),
    ("frontend", "catalog"),
    ("frontend", "orders"),
    ("orders", "payments"),
    ("orders", "catalog"),
    ("batch-report", "catalog"),
    ("batch-report", "orders"),
    ("batch-report", "payments"),
]
DEMO_NODES = sorted({n for edge in DEMO_EDGES for n in edge})


def test_callers_are_left_of_callees() -> None:
    positions = layout(DEMO_NODES, DEMO_EDGES)
    assert set(positions) == set(DEMO_NODES)
    for source, dest in DEMO_EDGES:
        assert positions[source][0] < positions[dest][0], (source, dest)
    for x, y in positions.values():
        assert 0 <= x <= 1 and 0 <= y <= 1


def test_layout_is_deterministic_and_separates_nodes() -> None:
    first = layout(DEMO_NODES, DEMO_EDGES)
    assert first == layout(list(reversed(DEMO_NODES)), list(reversed(DEMO_EDGES)))
    points = list(first.values())
    assert len(set(points)) == len(points)


def test_cycles_share_a_column() -> None:
    positions = layout(["a", "b", "c"], [("a", "b"), ("b", "a"), ("b", "c")])
    assert positions["a"][0] == positions["b"][0] < positions["c"][0]


def test_graph_without_edges_and_empty_graph() -> None:
    positions = layout(["a", "b"], [])
    assert set(positions) == {"a", "b"} and positions["a"] != positions["b"]
    assert layout([], []) == {}


def test_edge_to_unknown_node_is_refused() -> None:
    with pytest.raises(LayoutError, match="not in the node list"):
        layout(["a"], [("a", "b")])


def test_candidate_loads_like_the_cli_and_names_the_uploaded_file() -> None:
    policies = load_candidate([PolicyFile("shop.yaml", POLICIES)])
    assert {p.key for p in policies.authorization} == {
        "shop/payments-only-orders",
        "shop/catalog-readers",
        "shop/orders-callers",
    }
    with pytest.raises(ValueError, match=r"^bad\.yaml: line \d+, column \d+: invalid YAML"):
        load_candidate([PolicyFile("bad.yaml", "a: [unclosed")])


@pytest.mark.parametrize("name", ["../x.yaml", ".hidden.yaml", "policy.txt", ""])
def test_candidate_refuses_unusable_names(name: str) -> None:
    with pytest.raises(ValueError):
        load_candidate([PolicyFile(name, POLICIES)])


def test_stored_sets_lists_the_data_dirs_policies(tmp_path: Path) -> None:
    assert stored_sets(tmp_path) == []
    (tmp_path / "policies" / "team").mkdir(parents=True)
    (tmp_path / "policies" / "shop.yaml").write_text(POLICIES)
    (tmp_path / "policies" / "team" / "extra.yml").write_text("kind: ConfigMap\n")
    (tmp_path / "policies" / "notes.txt").write_text("not policy")
    names = [f.name for f in stored_sets(tmp_path)]
    assert names == ["shop.yaml", "team/extra.yml"]
