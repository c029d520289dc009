"""`auditmesh log checkpoint | prove` on a data directory, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import canonical_bytes
from auditmesh.ledger.note import Verifier, generate_key
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


def _vkey_name(vkey: str) -> str:
    """The `name+hash` part of a verifier key, as the messages name a key."""
    verifier = Verifier.from_vkey(vkey.strip())
    return f"{verifier.name}+{verifier.key_hash:08x}"


@pytest.mark.parametrize("source", ["another data directory", "generate_key"])
def test_another_logs_key_is_one_line_naming_both_keys_and_the_fix(
    source: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if source == "generate_key":
        key = generate_key("example.com/other")[1]
    else:
        other = open_ledger(tmp_path / "other", origin="test.auditmesh/log")
        fill(other, generate(5))
        other.close()
        key = (tmp_path / "other" / "keys" / "log.vkey").read_text().strip()
    ours = _vkey_name((data / "keys" / "log.vkey").read_text())
    assert main(["log", "verify", "--data", str(data), "--key", key]) == 1
    assert capsys.readouterr().err == (  # one line: not wrapped at the console's width
        f"FAILED: {data}: no checkpoint is signed by the given key {_vkey_name(key)}; "
        f"checkpoint #1 is signed by {ours}. Either that key is not this log's, or every "
        "checkpoint was re-signed by another key: check the key against a copy of the log's "
        "key you obtained independently, never against the copy in the log's own data "
        "directory\n"
    )  # the given key may be the right one and the checkpoints forged: never send the
    # auditor to the (possibly compromised) data directory for a key


def test_a_data_directorys_key_that_signs_none_of_its_checkpoints(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = _vkey_name((data / "keys" / "log.vkey").read_text())
    replaced = generate_key("test.auditmesh/log")[1]
    (data / "keys" / "log.vkey").write_text(replaced + "\n")
    assert main(["log", "verify", "--data", str(data), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        f"no checkpoint is signed by the data directory's key {_vkey_name(replaced)} "
        f"(keys/log.vkey); checkpoint #1 is signed by {ours}. The key file or the checkpoints "
        "were replaced" in err
    )


def test_jobs_and_indexes_are_refused_with_url_and_jobs_below_one(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the server is asked (nothing listens on port 9)."""
    url = ["log", "verify", "--url", "http://127.0.0.1:9", "--key", str(data / "keys/log.vkey")]
    assert main([*url, "--jobs", "2"]) == 2
    assert "--jobs applies to a local ledger (--data) only" in capsys.readouterr().err
    assert main([*url, "--indexes"]) == 2
    assert "--indexes reads the store's columns: use it with --data" in capsys.readouterr().err
    assert main(["log", "verify", "--data", str(data), "--jobs", "0"]) == 2
    assert "--jobs: give at least 1" in capsys.readouterr().err
    assert main(["log", "verify", "--data", str(data), "--jobs", "2", "--quiet"]) == 0


def test_verify_help_says_what_jobs_is_for_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["log", "verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps at the console's width
    assert "--jobs N worker processes, for a ledger read with --data only (default: one" in out
