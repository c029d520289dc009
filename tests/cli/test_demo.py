"""`auditmesh demo --exit`: the whole job end to end, checked against the ledger it leaves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from auditmesh.analysis.findings import detect
from auditmesh.cli.demo import command_name
from auditmesh.cli.main import main
from auditmesh.datadir import writer_lock
from auditmesh.demo.run import DEMO_MARK, DemoError, load_events, prepare
from auditmesh.serverproc import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("demo") / "demo-data"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    out = io.StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        code = main(["demo", "--data", str(data), "--duration", "10", "--exit"])
    finally:
        capture.undo()
    assert code == 0, out.getvalue()
    return data, out.getvalue()


def test_demo_tells_the_story(demo: tuple[Path, str]) -> None:
    _, out = demo
    for step in (
        "1. Audit server",
        "2. Driving",
        "3. Service graph",
        "4. Findings",
        "5. Proved a denied call",
        "6. Verified the whole ledger",
        "7. Then one stored event was edited",
    ):
        assert step in out
    assert "caught" in out
    # the progress bar ends on the final tally, calls in flight at the end included
    *_, shown = re.findall(r"(\d+) calls, \d+ denied", out)
    assert re.search(rf"Done: {shown} calls made", out), out


def test_the_commands_to_try_next_can_be_pasted_whole(demo: tuple[Path, str]) -> None:
    data, out = demo  # printed to an 80-column console; each command longer than that
    lines = out.splitlines()
    auditmesh = command_name()
    assert f"  {auditmesh} log verify --data {data}" in lines
    key = (data / "keys" / "log.vkey").read_text().strip()
    assert f"  {auditmesh} bundle verify evidence.zip --key '{key}'" in lines
    # pasted into a shell whose PATH has no auditmesh (no venv activated), they run
    shell = {"PATH": "/usr/bin:/bin", "HOME": str(data)}
    for line in (
        next(x for x in lines if x.endswith(f"log verify --data {data}")),
        next(x for x in lines if " log verify-proof " in x),
    ):
        done = subprocess.run(line.strip(), shell=True, env=shell, capture_output=True)
        assert done.returncode == 0, (line, done.stderr)


def test_the_demos_graph_table_counts_what_auditmesh_graph_counts(
    demo: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = demo
    rows = re.findall(r"│ (\S+) +│ (\S+) +│ +(\d+) │ +(\d+) │ +(\d+) │", out)
    shown = {(a, b): (int(calls), int(failed), int(denied)) for a, b, calls, failed, denied in rows}
    assert ("unknown", "frontend") in shown  # the outside caller, named as the graph names it
    capsys.readouterr()
    assert main(["graph", "--data", str(data), "--format", "json"]) == 0
    graph = json.loads(capsys.readouterr().out)
    counted = {
        (e["source"], e["dest"]): (e["requests"], e["errors"], e["denials"]) for e in graph["edges"]
    }
    assert shown == counted  # denials are not failures, in both


def test_the_command_name_is_the_bare_name_only_where_path_finds_this_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here = Path(sys.executable).parent
    monkeypatch.setenv("PATH", f"{here}:/usr/bin:/bin")
    assert command_name() == "auditmesh"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(here.parent.parent)  # a checkout with .venv/bin/auditmesh
    assert command_name() == f"{here.parent.name}/bin/auditmesh"
    monkeypatch.chdir(tmp_path)  # elsewhere: the whole path
    assert command_name() == str(here / "auditmesh")


def test_every_edge_is_audited_with_identities(demo: tuple[Path, str]) -> None:
    data, _ = demo
    edges = Counter(
        (e.source.service if e.source else None, e.destination.service if e.destination else None)
        for _, e in load_events(data)
        if e.direction == "inbound" and e.kind == "http"
    )
    for edge in [
        ("frontend", "catalog"),
        ("frontend", "orders"),
        ("orders", "payments"),
        ("batch-report", "orders"),
        ("batch-report", "payments"),
        (None, "frontend"),
    ]:
        assert edges[edge] > 0, edge


def test_denied_calls_name_the_policy(demo: tuple[Path, str]) -> None:
    data, _ = demo
    denied = [e for _, e in load_events(data) if e.authz is not None and e.authz.decision == "deny"]
    assert denied
    for event in denied:
        assert event.source is not None and event.source.service == "batch-report"
        assert event.authz is not None and event.authz.policy == "shop/payments-only-orders"
        assert event.http is not None and event.http.status == 403


def test_intruder_is_an_authn_failure(demo: tuple[Path, str]) -> None:
    data, _ = demo
    failures = [e for _, e in load_events(data) if e.kind == "authn" and e.outcome == "failure"]
    assert failures
    assert {e.destination.service for e in failures if e.destination} == {"orders"}


SHOP = "spiffe://cluster.local/ns/shop/sa/"


def test_every_planted_problem_is_found_and_attributed(demo: tuple[Path, str]) -> None:
    data, _ = demo
    found = {(f.kind, f.responsible, f.destination) for f in detect(load_events(data))}
    assert ("repeated_denials", SHOP + "batch-report", "payments") in found
    assert ("error_burst", SHOP + "catalog", "catalog") in found
    # the flood: against batch-report's usual calls, or as a new edge when the short demo's
    # baseline saw none of them (one finding either way)
    flood = {(kind, SHOP + "batch-report", "orders") for kind in ("excessive_volume", "new_edge")}
    assert len(flood & found) == 1
    assert ("new_edge", SHOP + "orders", "catalog") in found
    assert ("failed_authentication", "127.0.0.1", "orders") in found


def test_no_finding_blames_a_well_behaved_caller(demo: tuple[Path, str]) -> None:
    data, _ = demo
    for finding in detect(load_events(data)):
        assert finding.responsible not in (SHOP + "frontend", SHOP + "payments"), finding
        assert finding.destination != "frontend", finding


def test_ledger_verifies(demo: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = demo
    assert main(["log", "verify", "--data", str(data), "--quiet"]) == 0


def test_demo_refuses_to_replace_a_foreign_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--data", str(tmp_path), "--exit"]) == 2
    assert "holds files that no demo made" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()


def test_demo_never_replaces_a_servers_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the data directory of a real server (here: running) is not the demo's to delete
    flags = ["--mesh-listen", "off", "--otlp-grpc", "off"]
    with ServerProcess(tmp_path / "srv", extra=flags) as server:
        assert main(["demo", "--data", str(server.data_dir), "--exit"]) == 2
        assert "holds a ledger that no demo made" in capsys.readouterr().err
        assert (server.data_dir / "ledger.db").exists()
        assert (server.data_dir / "keys" / "log.skey").exists()


@pytest.mark.parametrize("mark", ["folder", "other words", "symlink"])
def test_only_the_demos_own_mark_lets_it_replace_a_directory(tmp_path: Path, mark: str) -> None:
    # a `demo/` folder on a case-insensitive file system answers to DEMO too
    data = tmp_path / "project"
    data.mkdir()
    (data / "notes.yaml").write_text("keep me")
    if mark == "folder":
        (data / DEMO_MARK).mkdir()
    elif mark == "other words":
        (data / DEMO_MARK).write_text("my own file\n")
    else:
        made = tmp_path / "demo-data"
        prepare(made)
        (data / DEMO_MARK).symlink_to(made / DEMO_MARK)
    with pytest.raises(DemoError, match="no demo made"):
        prepare(data)
    assert (data / "notes.yaml").read_text() == "keep me"
    with pytest.raises(DemoError, match="is not a directory"):
        prepare(data / "notes.yaml")


def test_demo_replaces_its_own_directory_but_not_while_it_is_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demo-data"
    prepare(data)
    (data / "ledger.db").write_bytes(b"an earlier demo's ledger")
    prepare(data)  # the demo's own: replaced
    assert sorted(p.name for p in data.iterdir()) == [DEMO_MARK]
    (data / "old-run.txt").write_text("x")
    with writer_lock(data):  # an earlier demo still serving it
        with pytest.raises(DemoError, match="in use by auditmesh server"):
            prepare(data)
    assert (data / "old-run.txt").exists()
