"""Paths a command cannot write and values it cannot use end in one `auditmesh: error: …`
line (exit 2) naming the option, before the work where that can be known, not in a
traceback after it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from auditmesh.cli import output_dir, positive_float, positive_int, writable_file, write_output
from auditmesh.cli.main import UserError, main
from auditmesh.datadir import open_ledger
from auditmesh.identity.ca import init_command
from tests.conftest import fill, generate


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger whose generated traffic holds a finding (batch-report's denials), signed."""
    path = tmp_path_factory.mktemp("unusable") / "data"
    ledger = open_ledger(path, origin="test.auditmesh/paths")
    fill(ledger, generate(3000), checkpoint_every=1000)
    ledger.close()
    return path


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The command's one error line; it must end with exit 2 and print nothing else."""
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("auditmesh: error: "), err
    return err.removeprefix("auditmesh: error: ").strip()


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a directory\n")
    return path


# -- 1. bundle create -o ----------------------------------------------------------------


def test_bundle_create_into_a_missing_directory(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing" / "e.zip"
    argv = ["bundle", "create", "--data", str(data), "-o", str(target)]
    assert error_of(argv, capsys) == (
        f"-o: cannot write {target}: {tmp_path / 'missing'} does not exist"
    )


def test_bundle_create_onto_a_directory(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bundle", "create", "--data", str(data), "-o", str(tmp_path)]
    assert error_of(argv, capsys) == f"-o: cannot write {tmp_path}: Is a directory"


# -- 2. findings --bundle DIR -------------------------------------------------------------


def test_findings_bundle_dir_that_is_a_file_is_refused_before_the_findings(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = a_file(tmp_path)
    argv = ["findings", "--data", str(data), "--bundle", str(afile)]
    assert error_of(argv, capsys) == f"--bundle: {afile} exists and is not a directory"


def test_findings_bundle_dir_that_cannot_be_created(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    under_a_file = a_file(tmp_path) / "bundles"
    argv = ["findings", "--data", str(data), "--bundle", str(under_a_file)]
    assert error_of(argv, capsys) == (
        f"--bundle: cannot create the directory {under_a_file}: Not a directory"
    )


def test_findings_bundle_dir_is_created_and_filled(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundles = tmp_path / "new" / "bundles"
    assert main(["findings", "--data", str(data), "--bundle", str(bundles)]) == 0
    assert [p.name for p in bundles.iterdir()] == ["01-repeated_denials.zip"]


# -- 3. export ecs --cursor ----------------------------------------------------------------


def export_ecs(data: Path, cursor: Path, output: Path) -> list[str]:
    return ["export", "ecs", "--data", str(data), "--cursor", str(cursor), "-o", str(output)]


def test_export_cursor_that_is_a_directory_is_refused_before_exporting(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "x.ndjson"
    assert error_of(export_ecs(data, tmp_path, output), capsys) == (
        f"--cursor: cannot write {tmp_path}: Is a directory"
    )
    assert not output.exists()
    under_a_file = a_file(tmp_path) / "ecs.cursor"
    assert error_of(export_ecs(data, under_a_file, output), capsys) == (
        f"--cursor: {under_a_file.parent} exists and is not a directory"
    )
    assert not output.exists()


def test_export_cursor_in_a_new_directory_is_saved(data: Path, tmp_path: Path) -> None:
    cursor = tmp_path / "state" / "ecs.cursor"
    assert main(export_ecs(data, cursor, tmp_path / "x.ndjson")) == 0
    assert '"next_index": 3000' in cursor.read_text()


# -- 4. numbers that must be positive ----------------------------------------------------


@pytest.mark.parametrize(
    ("words", "option", "value", "expected"),
    [
        (["ecs", "--follow"], "--poll", "-1", "a positive number of seconds"),
        (["ecs", "--follow"], "--poll", "0", "a positive number of seconds"),
        (["ecs", "--follow"], "--poll", "nan", "a positive number of seconds"),
        (["otlp"], "--timeout", "-1", "a positive number of seconds"),
        (["otlp"], "--timeout", "inf", "a positive number of seconds"),
        (["otlp"], "--attempts", "0", "a positive integer"),
        (["otlp"], "--batch", "0", "a positive integer"),
    ],
    ids=["poll-1", "poll0", "poll-nan", "timeout-1", "timeout-inf", "attempts0", "batch0"],
)
def test_export_refuses_values_it_cannot_use_at_parsing(
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    words: list[str],
    option: str,
    value: str,
    expected: str,
) -> None:
    # before this, --poll -1 exported everything, then failed in time.sleep; --attempts 0
    # was taken as 1; --timeout -1 failed in the socket layer
    output = tmp_path / "out.ndjson"
    where = ["-o", str(output)] if words[0] == "ecs" else ["--endpoint", "http://127.0.0.1:9"]
    argv = ["export", *words, "--data", str(data), *where, option, value]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--exit-when-idle", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: expected {expected}, got '{value}'" in err
    assert not output.exists()


def test_positive_number_types() -> None:
    assert positive_int("3") == 3 and positive_float("0.25") == 0.25
    for bad in ("0", "-2", "1.5", "x", ""):
        with pytest.raises(Exception, match="expected a positive integer"):
            positive_int(bad)
    for bad in ("0", "-0.1", "nan", "inf", "x"):
        with pytest.raises(Exception, match="expected a positive number of seconds"):
            positive_float(bad)


# -- 5. ca issue --out, ca init --data, server --data ------------------------------------


def test_ca_issue_out_in_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_data = tmp_path / "ca-data"
    assert main(["ca", "init", "--trust-domain", "cluster.local", "--data", str(ca_data)]) == 0
    csr = tmp_path / "csr.pem"
    csr.write_text("unused: the --out check comes first\n")
    out = tmp_path / "missing" / "svid.pem"
    argv = ["ca", "issue", "--data", str(ca_data), "--id", "spiffe://cluster.local/ns/a/sa/b"]
    argv += ["--csr", str(csr), "--out", str(out)]
    assert error_of(argv, capsys) == (
        f"--out: cannot write {out}: {tmp_path / 'missing'} does not exist"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["ca", "init", "--trust-domain", "cluster.local"],
        ["server", "--listen", "127.0.0.1:0", "--mesh-listen", "off", "--otlp-grpc", "off"],
    ],
    ids=["ca-init", "server"],
)
def test_data_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    under_a_file = a_file(tmp_path) / "data"
    assert error_of([*command, "--data", str(under_a_file)], capsys) == (
        f"--data: cannot create the directory {under_a_file}: Not a directory"
    )


# -- 5b. log prove -o and --event-out ---------------------------------------------------


@pytest.mark.parametrize("option", ["-o", "--event-out"])
def test_log_prove_into_a_missing_directory(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    # before this, the proof was made and the write then ended in a FileNotFoundError traceback
    target = tmp_path / "missing" / "out"
    argv = ["log", "prove", "--data", str(data), "7", option, str(target)]
    assert error_of(argv, capsys) == (
        f"{option}: cannot write {target}: {tmp_path / 'missing'} does not exist"
    )


def test_log_prove_event_out_onto_a_directory_writes_no_proof(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proof = tmp_path / "p.tlog-proof"
    argv = ["log", "prove", "--data", str(data), "7", "-o", str(proof)]
    argv += ["--event-out", str(tmp_path)]
    assert error_of(argv, capsys) == f"--event-out: cannot write {tmp_path}: Is a directory"
    assert not proof.exists()


# -- 6. the hint to create the mesh CA ---------------------------------------------------


def test_the_ca_init_hint_works_as_pasted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "my data"  # quoted in the hint, so a shell keeps it one word
    hint = init_command(data)
    assert hint.startswith("auditmesh ca init --trust-domain cluster.local --data ")
    words = shlex.split(hint)
    assert words[0] == "auditmesh" and main(words[1:]) == 0
    assert "mesh CA for trust domain cluster.local created" in capsys.readouterr().out
    assert (data / "ca").is_dir()


def test_a_missing_ca_names_the_pasteable_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ca", "token", "--id", "spiffe://cluster.local/ns/a/sa/b", "--data", str(tmp_path)]
    assert error_of(argv, capsys).endswith(f"create one with `{init_command(tmp_path)}`")


# -- the helpers -------------------------------------------------------------------------


def test_output_helpers(tmp_path: Path) -> None:
    assert output_dir(tmp_path / "a" / "b", "--x") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert writable_file(tmp_path / "a" / "f", "-o") == tmp_path / "a" / "f"
    write_output(tmp_path / "a" / "f", "text", "-o")
    assert (tmp_path / "a" / "f").read_text() == "text"
    with pytest.raises(UserError, match=r"^-o: cannot write .*: Is a directory$"):
        write_output(tmp_path / "a", b"bytes", "-o")
