"""`auditmesh log checkpoint | prove` on a data directory, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import canonical_bytes
from auditmesh.ledger.note import Verifier
from auditmesh.ledger.tlogproof import TlogProof, verify_tlog_proof
from tests.conftest import fill, generate


@pytest.fixture
def data(tmp_path: Path) -> Path:
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    fill(ledger, generate(300))
    ledger.close()
    return tmp_path / "data"


def test_checkpoint_prints_the_signed_note(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "checkpoint", "--data", str(data)]) == 0
    assert capsys.readouterr().out.startswith("test.auditmesh/log\n300\n")


def test_prove_writes_a_tlog_proof_that_verifies(data: Path, tmp_path: Path) -> None:
    event = generate(300)[77]
    out = tmp_path / "e.tlog-proof"
    assert main(["log", "prove", event.id, "--data", str(data), "-o", str(out)]) == 0
    proof = TlogProof.parse(out.read_bytes())
    verifier = Verifier.from_vkey((data / "keys" / "log.vkey").read_text())
    checkpoint = verify_tlog_proof(proof, canonical_bytes(event), verifier)
    assert proof.index == 77 and checkpoint.size == 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["log", "prove", "nope"], "is not an event id"),
        (["log", "prove", "01890a5d-ac96-774b-bcce-b302099a8057"], "no event"),
    ],
)
def test_prove_errors(
    data: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--data", str(data)]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "checkpoint", "--data", str(tmp_path / "none")]) == 2
    assert "no ledger at" in capsys.readouterr().err
