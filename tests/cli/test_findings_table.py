"""`auditmesh findings` in an 80-column terminal: SPIFFE IDs as the short names the service
graph uses, no cell folded down to a few characters; the JSON keeps the full IDs."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from pathlib import Path

import pytest
from rich.console import Console

from auditmesh.analysis.findings import Finding, detect
from auditmesh.cli.findings import table
from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent
from tests.analysis.test_findings import TD, authn_failure, call, indexed, steady
from tests.conftest import fill


def troubled() -> list[AuditEvent]:
    """Steady shop traffic and four kinds of trouble, the longest kind name among them."""
    rng = random.Random(14)
    events = steady(60)
    events += [call(40 + i * 0.25, "frontend", "catalog", status=500, rng=rng) for i in range(20)]
    events += [call(45 + i, "batch-report", "payments", denied=True, rng=rng) for i in range(4)]
    events += [call(50 + i, "intruder", "payments", mtls=False, rng=rng) for i in range(3)]
    events += [authn_failure(52 + i, "203.0.113.9", "not_tls", rng=rng) for i in range(4)]
    return sorted(events, key=lambda e: e.time_ns)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("findings-table") / "data"
    ledger = open_ledger(path, origin="test.auditmesh/findings-table")
    fill(ledger, troubled())
    ledger.close()
    return path


def words_whole(text: str, shown: str) -> None:
    """Every word of `text` is on one line of `shown`: none was folded across lines."""
    for word in text.split():
        assert re.search(rf"(^|\s){re.escape(word)}(\s|$)", shown, re.M), (word, shown)


def test_findings_fit_80_columns_with_short_names(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # rich sizes its table to this width
    assert main(["findings", "--data", str(data)]) == 0
    shown = capsys.readouterr().out
    kinds = ["error_burst", "repeated_denials", "plaintext_calls", "failed_authentication"]
    assert all(kind in shown for kind in kinds)
    assert all(len(line) <= 80 for line in shown.splitlines())
    assert "spiffe://" not in shown.split("SPIFFE IDs as")[0]  # the caption names them
    for name in ("catalog.shop", "batch-report.shop", "203.0.113.9", "10.0.0.1", "payments"):
        words_whole(name, shown)
    words_whole("batch-report.shop was denied 4 times calling payments", shown)
    words_whole("--format json has them whole", shown)


def test_the_json_keeps_the_full_ids(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["findings", "--data", str(data), "--format", "json"]) == 0
    responsible = {f["responsible"] for f in json.loads(capsys.readouterr().out)}
    assert {TD + "catalog", TD + "batch-report"} <= responsible


def rendered(findings: list[Finding], width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(table(findings, 100))
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_every_cell_of_every_finding_is_whole_at_80_columns() -> None:
    found = detect(indexed(troubled()))
    assert len(found) >= 4
    shown = rendered(found)
    for finding in found:
        for text in (finding.kind, finding.severity, str(finding.count), finding.summary):
            words_whole(re.sub(r"spiffe://\S+/sa/([\w-]+)", r"\1.shop", text), shown)


def test_ids_that_would_share_a_short_name_stay_whole() -> None:
    [denials] = [f for f in detect(indexed(troubled())) if f.kind == "repeated_denials"]
    other = "spiffe://other.example/ns/shop/sa/batch-report"
    twin = dataclasses.replace(denials, responsible=other, summary=f"{other} too")
    shown = rendered([denials, twin], width=200)
    assert TD + "batch-report" in shown and other in shown  # one ID each: no home domain
    assert "batch-report.shop" not in shown


def test_an_id_of_another_trust_domain_stays_whole() -> None:
    found = detect(indexed(troubled()))
    [denials] = [f for f in found if f.kind == "repeated_denials"]
    foreign = "spiffe://evil.example/ns/shop/sa/orders"  # no local orders in these findings
    stranger = dataclasses.replace(denials, responsible=foreign, summary=f"{foreign} again")
    shown = rendered([*found, stranger], width=200)
    assert foreign in shown  # was: orders.shop, as if it were the local workload
    assert "batch-report.shop" in shown  # the home trust domain's IDs still short
