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
        (["log", "prove", "nope"], "'nope' is neither an event id (a UUID) nor an index"),
        (["log", "prove", "01890a5d-ac96-774b-bcce-b302099a8057"], "no event"),
        (["log", "prove", "300"], "no entry 300: the log in"),
    ],
)
def test_prove_errors(
    data: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--data", str(data)]) == 2
    assert message in capsys.readouterr().err


def test_prove_takes_the_index_query_shows(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "by-index.tlog-proof"
    assert main(["log", "prove", "77", "--data", str(data), "-o", str(out)]) == 0
    proof = TlogProof.parse(out.read_bytes())
    verifier = Verifier.from_vkey((data / "keys" / "log.vkey").read_text())
    checkpoint = verify_tlog_proof(proof, canonical_bytes(generate(300)[77]), verifier)
    assert proof.index == 77 and checkpoint.size == 300


def test_a_key_file_that_is_not_there_is_named(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["log", "verify", "--data", str(data), "--key", str(data / "nonexist.vkey")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nonexist.vkey' is not a verifier key" in err and "No such file or directory" in err


def test_missing_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "checkpoint", "--data", str(tmp_path / "none")]) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_a_key_file_whose_path_has_a_plus_is_read(data: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "log+copy.vkey"
    key_file.write_text((data / "keys" / "log.vkey").read_text())
    assert main(["log", "verify", "--data", str(data), "--key", str(key_file), "--quiet"]) == 0


def test_another_logs_key_is_named_with_the_signer_and_the_fix(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = open_ledger(tmp_path / "other", origin="test.auditmesh/log")
    fill(other, generate(5))
    other.close()
    given = Verifier.from_vkey((tmp_path / "other" / "keys" / "log.vkey").read_text().strip())
    ours = Verifier.from_vkey((data / "keys" / "log.vkey").read_text().strip())
    key = str(tmp_path / "other" / "keys" / "log.vkey")
    assert main(["log", "verify", "--data", str(data), "--key", key]) == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the console's width
    assert (
        f"it is signed by {ours.name}+{ours.key_hash:08x}, and the key trusted here is "
        f"{given.name}+{given.key_hash:08x}; give the log's own verifier key" in err
    )
    assert "expected [" not in err and "verifying" not in err  # no stale progress bar


def test_jobs_is_refused_with_url_and_below_one(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(data / "keys" / "log.vkey")
    url = ["log", "verify", "--url", "http://127.0.0.1:9", "--key", key, "--jobs", "2"]
    assert main(url) == 2
    assert "--jobs is for a ledger read with --data" in capsys.readouterr().err
    assert main(["log", "verify", "--data", str(data), "--jobs", "0"]) == 2
    assert "--jobs: give at least 1" in capsys.readouterr().err
