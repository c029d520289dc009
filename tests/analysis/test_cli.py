"""`auditmesh query | trace | graph` on a data directory, through `main([...])`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

import auditmesh.cli.query as cli_query
from auditmesh.analysis import graph
from auditmesh.analysis.rollup import MINUTE_NS
from auditmesh.cli.main import main
from auditmesh.collector import entry_of
from auditmesh.datadir import open_ledger
from auditmesh.events import Peer
from auditmesh.ledger.merkle import leaf_hash
from tests.analysis.calls import T0, hop
from tests.analysis.test_graph import SECOND, hand_made
from tests.analysis.test_query import mixed
from tests.analysis.test_trace import TRACE, checkout
from tests.conftest import generate


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cli") / "data"
    ledger = open_ledger(path, origin="test/cli")
    events = [*generate(200, seed=4), *[e for p in checkout().values() for e in p]]
    ledger.log.append([entry_of(e) for e in events])
    ledger.close()
    yield path


def test_query_table_lists_matching_events(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--data", str(data), "--decision", "deny", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if " payments " in line]
    assert len(rows) == 2 and all("403" in r and "deny" in r for r in rows)
    assert "2 events" in captured.out and "--cursor" in captured.err  # a third denial follows


def test_query_json_pages_with_the_printed_cursor(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["query", "--data", str(data), "--service", "payments", "--format", "json"]
    assert main([*base, "--limit", "5"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*base, "--limit", "5", "--cursor", first["next"]]) == 0
    second = json.loads(capsys.readouterr().out)
    assert main([*base, "--limit", "10"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert first["events"] + second["events"] == both["events"]


def test_query_takes_the_trace_prefix_its_table_shows(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["query", "--data", str(data), "--format", "json", "--order", "index"]
    assert main([*base, "--trace", TRACE]) == 0
    whole = json.loads(capsys.readouterr().out)["events"]
    assert main([*base, "--trace", TRACE[:8].upper()]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == whole and len(whole) == 8
    assert main([*base, "--trace", "ffffffff"]) == 0  # no trace id starts so: no event
    assert json.loads(capsys.readouterr().out)["events"] == []


def test_a_query_since_a_time_after_now_is_open_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A producer's clock may run ahead of ours: its events are still found by a --since
    # after now, since a query without --until has no end (a graph's window ends now).
    ahead = time.time_ns() + 3_600 * 10**9
    events, _, _ = hop("web", "api", trace_id="c" * 32, parent=None, time_ns=ahead)
    ledger = open_ledger(tmp_path / "data", origin="test/cli")
    ledger.log.append([entry_of(e) for e in events])
    ledger.close()
    since = datetime.fromtimestamp(ahead / 1e9 - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = ["query", "--data", str(tmp_path / "data"), "--since", since, "--format", "json"]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["events"]) == 2


def test_query_ecs_writes_one_document_per_event(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "--data", str(data), "--trace", TRACE, "--format", "ecs"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(docs) == 8 and {d["trace"]["id"] for d in docs} == {TRACE}
    ledger = open_ledger(data, create=False)
    try:
        for doc in docs:
            index = doc["event"]["sequence"]
            ((_, stored),) = ledger.store.entries(index, index + 1)
            assert doc["event"]["hash"] == leaf_hash(stored).hex()
    finally:
        ledger.close()


def test_trace_draws_the_call_tree(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", TRACE, "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "5 calls from 8 events" in out
    lines = out.splitlines()
    payments = next(line for line in lines if "orders → payments" in line)
    assert "denied" in payments and "403" in payments
    assert "outbound only" in next(line for line in lines if "orders → catalog" in line)
    assert main(["trace", TRACE, "--data", str(data), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["calls"] == 5


def test_trace_takes_the_prefix_the_query_table_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    twins = ["abcdef01" + "0" * 24, "abcdef01" + "1" * 24]
    events = [
        e for tid in twins for e in hop("web", "api", trace_id=tid, parent=None, time_ns=T0)[0]
    ]
    ledger = open_ledger(tmp_path / "data", origin="test/cli")
    ledger.log.append([entry_of(e) for e in events])
    ledger.close()
    base = ["--data", str(tmp_path / "data"), "--format", "json"]
    assert main(["trace", "ABCDEF010", *base]) == 0
    assert json.loads(capsys.readouterr().out)["trace_id"] == twins[0]
    assert main(["trace", "abcdef01", *base]) == 2
    assert (
        f"abcdef01 begins more than one trace id ({twins[0]}, {twins[1]})"
        in capsys.readouterr().err
    )


def test_graph_table_json_and_dot(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--data", str(data)]) == 0
    table = capsys.readouterr().out
    assert "frontend" in table and "catalog" in table and "p95" in table
    assert main(["graph", "--data", str(data), "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["requests"] == 200 + 5  # the trace's 8 events are 5 calls
    assert (data / "rollup.db").exists()
    assert main(["graph", "--data", str(data), "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph auditmesh {")


def test_the_graph_of_the_hand_made_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = open_ledger(tmp_path / "data", origin="test/hand")
    ledger.log.append([entry_of(e) for e in hand_made()])
    ledger.close()
    assert main(["graph", "--data", str(tmp_path / "data"), "--since", "3650d"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "batch-report" in line)
    assert row.split()[:3] == ["batch-report", "payments", "4"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "--status", "6xx"], "status"),
        (["query", "--limit", "0"], "--limit"),
        (["query", "--since", "tomorrow"], "neither a duration"),
        (["query", "--cursor", "nope"], "cursor"),
        (["trace", "xyz"], "not a trace id"),
        (["trace", "abcdef0"], "or the first 8 or more"),
        (["trace", "ffffffff"], "no trace id stored begins with ffffffff"),
        (["trace", "0" * 32], "no event carries"),
        # An empty window is refused, not answered with nothing (which looks like quiet).
        (["query", "--since", "1h", "--until", "2h"], "is not after --since (20"),
        (["graph", "--since", "1h", "--until", "2h"], "--until (20"),
        (["findings", "--since", "1h", "--until", "1h"], "is not after --since (20"),
        (["graph", "--since", "2200-01-01T00:00:00Z"], "is in the future (now is 20"),
    ],
)
def test_mistakes_are_one_line_errors(
    data: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--data", str(data)]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_data_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["graph", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_the_names_graph_prints_are_what_query_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: `graph` printed `unknown → payments.shop` (an Envoy outbound line names no
    caller), but `query --dest payments.shop`, `--service frontend.shop` and `--source
    unknown` answered `no events match`. Each edge's names with --calls once now list the
    calls it counts, as many as it says."""
    path = tmp_path / "data"
    ledger = open_ledger(path, origin="test/cli")
    ledger.log.append([entry_of(e) for e in mixed()])
    ledger.close()
    assert main(["graph", "--data", str(path)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^ unknown +payments\.shop +2 ", table, re.M), table
    assert "query --source CALLER --dest CALLEE --calls once" in _help(["graph"], capsys)
    for filters in (
        ["--dest", "payments.shop"],
        ["--service", "frontend.shop"],
        ["--source", "unknown"],
    ):
        assert main(["query", "--data", str(path), *filters]) == 0
        out = capsys.readouterr().out
        assert "no events match" not in out and " events (" in out, filters
    assert main(["graph", "--data", str(path), "--format", "json"]) == 0
    edges = json.loads(capsys.readouterr().out)["edges"]
    assert len(edges) == 8
    for edge in edges:
        argv = ["query", "--data", str(path), "--format", "json", "--limit", "1000"]
        argv += ["--source", edge["source"], "--dest", edge["dest"], "--calls", "once"]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["count"] == edge["requests"], edge
    # without --calls once, both sides of each call are listed
    both = ["query", "--data", str(path), "--format", "json", "--limit", "1000"]
    assert main([*both, "--source", "frontend.bookinfo", "--dest", "reviews.bookinfo"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 8
    with pytest.raises(SystemExit):
        main([*both, "--calls", "twice"])
    assert "invalid choice: 'twice'" in capsys.readouterr().err


def test_query_and_trace_print_a_party_with_no_name_as_the_graph_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: `graph` printed `orders → unknown` for a callee that named nothing (an
    outbound report of a call that reached no service), and `query --dest unknown` found it,
    but query's table printed `orders ⇢ ?` and a trace `orders → ?`, a name no filter takes."""
    nameless = []
    for trace_id, destination in (("d" * 32, None), ("e" * 32, Peer())):
        events, _, _ = hop(
            "orders", "x", trace_id=trace_id, parent=None, time_ns=T0, sides=("outbound",)
        )
        nameless += [msgspec.structs.replace(e, destination=destination) for e in events]
    ledger = open_ledger(tmp_path / "data", origin="test/cli")
    ledger.log.append([entry_of(e) for e in nameless])
    ledger.close()
    data = ["--data", str(tmp_path / "data")]
    assert main(["graph", *data]) == 0
    assert re.search(r"^ orders +unknown +2 ", capsys.readouterr().out, re.M)
    assert main(["query", *data, "--dest", "unknown", "--calls", "once"]) == 0
    out = capsys.readouterr().out
    assert out.count("orders ⇢ unknown") == 2 and "?" not in out, out
    assert main(["trace", "d" * 32, *data, "--format", "json"]) == 0
    tree = json.dumps(json.loads(capsys.readouterr().out))
    assert '"destination": "unknown"' in tree and '"?"' not in tree, tree


def _help(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_the_graph_prints_no_two_nodes_of_one_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: shop's orders → db and the calls of an orders → db that named no
    namespace (one namespace in view, so no name was qualified) printed as two rows
    `orders  db`, and `--format json` listed one node `db` with the calls of both."""
    import msgspec

    from auditmesh.events import Peer

    events = []
    for n in range(3):
        parts, _, _ = hop("orders", "db", trace_id=f"{n + 1:032x}", parent=None, time_ns=T0 + n)
        events += parts
    for n in range(2):
        parts, _, _ = hop("orders", "db", trace_id=f"{n + 9:032x}", parent=None, time_ns=T0 + n)
        events += [
            msgspec.structs.replace(
                e, source=Peer(service="orders"), destination=Peer(service="db")
            )
            for e in parts
        ]
    path = tmp_path / "data"
    ledger = open_ledger(path, origin="test/cli")
    ledger.log.append([entry_of(e) for e in events])
    ledger.close()
    assert main(["graph", "--data", str(path), "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert sorted((e["source"], e["dest"], e["requests"]) for e in body["edges"]) == [
        ("orders", "db", 2),
        ("orders.shop", "db.shop", 3),
    ]
    assert sorted((n["name"], n["inbound"]) for n in body["nodes"]) == [
        ("db", 2),
        ("db.shop", 3),
        ("orders", 0),
        ("orders.shop", 0),
    ]
    assert main(["graph", "--data", str(path)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^ orders\.shop +db\.shop +3 ", table, re.M), table
    assert re.search(r"^ orders +db +2 ", table, re.M), table
    # the qualified names select their calls
    argv = ["query", "--data", str(path), "--format", "json", "--calls", "once"]
    assert main([*argv, "--source", "orders.shop", "--dest", "db.shop"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3


@pytest.mark.parametrize(
    ("rates", "shown"),
    [  # the console's cases (tests/console/test_pages.py, dom.js rateUnit and fmtRateIn)
        ([5.2, 0.61, 1 / 60, 1e-5, 0], ["5.2/s", "0.61/s", "0.017/s", "< 0.01/s", "0/s"]),
        ([0.8, 0.05], ["48.0/min", "3.0/min"]),
        ([1 / 1800, 1 / 86400], ["2.0/h", "0.042/h"]),
        ([1e-9], ["< 0.01/day"]),
        ([150, 2], ["150/s", "2.0/s"]),
        ([12345.6, 6.97e-08], ["12346/s", "< 0.01/s"]),  # never in exponent form
    ],
)
def test_a_tables_rates_share_the_unit_its_largest_reads_best_in(
    rates: list[float], shown: list[str]
) -> None:
    unit = graph.rate_unit(rates)
    assert [graph.format_rate_in(rate, unit) for rate in rates] == shown


def test_one_call_in_the_running_minute_reads_one_a_minute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `graph --since 5m` showed 2.1/min for the one call of an edge, made in
    the current minute with 28 s of it gone: the active span ended at now, so the running
    minute counted 28 s. It counts as a whole minute, as the edge's other minutes do."""
    events, _, _ = hop("orders", "payments", trace_id="f" * 32, parent=None, time_ns=T0 + SECOND)
    ledger = open_ledger(tmp_path / "data", origin="test/cli")
    ledger.log.append([entry_of(e) for e in events])
    ledger.close()
    now = T0 + 28 * SECOND
    monkeypatch.setattr(cli_query, "time", SimpleNamespace(time_ns=lambda: now))
    argv = ["graph", "--data", str(tmp_path / "data"), "--since", "5m"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert re.search(r"^ orders +payments +1 +1\.0/min ", table, re.M), table
    assert main([*argv, "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    [edge] = body["edges"]
    assert body["window"]["to_ns"] == now  # the window still ends now
    assert (edge["active_from_ns"], edge["active_to_ns"]) == (T0, T0 + MINUTE_NS)
    assert (edge["active_seconds"], edge["active_rate_per_s"]) == (60, round(1 / 60, 3))


def test_the_graph_shows_rates_while_active_in_one_unit_and_marks_denials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: the table and the DOT picture divided an edge's calls by the whole window
    (4 denied calls in one minute of an hour read 0.00111/s), and DOT drew denials in the
    red of the worst error bin. Now, as in the console: the rate while the edge had calls,
    one unit for all rows, denied edges cased in the denial colour with "N denied"."""
    late, _, _ = hop(
        "frontend", "catalog", trace_id=f"{999:032x}", parent=None,
        time_ns=T0 + 3 * MINUTE_NS + 5 * SECOND, sides=("inbound",),
    )  # fmt: skip
    ledger = open_ledger(tmp_path / "data", origin="test/active")
    ledger.log.append([entry_of(e) for e in [*hand_made(), *late]])
    ledger.close()

    def iso(ns: int) -> str:
        return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()

    argv = ["graph", "--data", str(tmp_path / "data")]
    argv += ["--since", iso(T0), "--until", iso(T0 + 60 * MINUTE_NS)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    # over its minutes: 4 calls in 1 min, 11 in 4 (minutes 0 to 3), 3 and 1 in 1
    for row in (
        r"batch-report +payments +4 +4\.0/min +0\.0% +4 denied ",
        r"frontend +catalog +11 +2\.8/min +18\.2% +0 ",
        r"frontend +orders +3 +3\.0/min ",
        r"orders +payments +1 +1\.0/min ",
    ):
        assert re.search(rf"^ {row}", table, re.M), (row, table)
    assert "rate while active" in table and "not the window's average" in table
    assert main([*argv, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    denied = next(line for line in dot.splitlines() if '"batch-report" ->' in line)
    assert "4 req, 4.0/min while active" in denied and "\\n4 denied" in denied
    assert 'color="#6b2fa3:#2f9e6b:#6b2fa3"' in denied and 'fontcolor="#6b2fa3"' in denied
    catalog = next(line for line in dot.splitlines() if '"frontend" -> "catalog"' in line)
    assert "11 req, 2.8/min while active" in catalog and "denied" not in catalog
