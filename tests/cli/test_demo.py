"""`auditmesh demo` does the whole job end to end and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.cli.main import main

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "demo-data"
    assert main(["demo", "--data", str(data), "--events", "1500"]) == 0
    out = capsys.readouterr().out
    assert "Sent 1500 audited calls" in out
    assert "denied" in out and "checks against the signed root" in out
    assert "1500 entries recomputed" in out
    assert "caught" in out
    assert main(["log", "verify", "--data", str(data), "--quiet"]) == 0


def test_demo_refuses_to_replace_a_foreign_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--data", str(tmp_path)]) == 2
    assert "not a demo ledger" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()
