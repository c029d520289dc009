"""`auditmesh ca ...` through the real entry point, on a temporary data directory."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.cli.main import main
from auditmesh.identity.spiffe import parse
from auditmesh.identity.svid import make_csr, verify_peer_svid
from auditmesh.identity.tokens import JoinTokens, TokenError
from tests.identity.conftest import CLI_ID as ID


def test_init_creates_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "fresh"
    assert main(["ca", "init", "--trust-domain", "example.org", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "trust domain example.org" in out and "sha256" in out
    assert stat.S_IMODE((data / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert (data / "ca" / "ca.pem").exists() and (data / "ca" / "ca.json").exists()


def test_init_twice_is_refused_unless_forced(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (data / "ca" / "ca.pem").read_bytes()
    assert main(["ca", "init", "--trust-domain", "example.org", "--data", str(data)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (data / "ca" / "ca.pem").read_bytes() == before
    args = ["ca", "init", "--trust-domain", "example.org", "--data", str(data), "--force"]
    assert main(args) == 0
    assert (data / "ca" / "ca.pem").read_bytes() != before


def test_init_with_a_bad_trust_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "new"
    assert main(["ca", "init", "--trust-domain", "Bad_Domain", "--data", str(data)]) == 2
    assert "lowercase" in capsys.readouterr().err
    assert not data.exists()  # refused before the directory was made


def test_token_prints_only_the_token_on_stdout(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["ca", "token", "--id", ID, "--ttl", "30s", "--data", str(data)]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert len(token) == 43 and "\n" not in token
    assert f"one-time join token for {ID}" in captured.err
    store = JoinTokens(data)
    record = store.records()[0]
    assert record.expires_at - record.created_at == timedelta(seconds=30)
    assert store.redeem(token, datetime.now(UTC)) == parse(ID)
    with pytest.raises(TokenError):
        store.redeem(token, datetime.now(UTC))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "spiffe://other.org/ns/a/sa/b"], "not in this CA's trust domain 'example.org'"),
        (["--id", "spiffe://example.org"], "names no workload"),
        (["--id", "example.org/ns/a/sa/b"], "scheme is missing"),
        (["--id", ID, "--ttl", "10x"], "--ttl: invalid duration '10x'"),
        (["--id", ID, "--ttl", "0m"], "longer than zero"),
        (["--id", ID, "--ttl", "1000d"], "a join token lives at most 30 days"),
        (["--id", "spiffe://example.org/auditmesh/server"], "reserved for auditmesh's own"),
    ],
)
def test_token_errors(
    data: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    capsys.readouterr()
    assert main(["ca", "token", *args, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("auditmesh: error: ")
    assert message in err


def test_token_without_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "token", "--id", ID, "--data", str(tmp_path)]) == 2
    assert "auditmesh ca init" in capsys.readouterr().err


def test_issue_and_bundle(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    capsys.readouterr()
    assert main(["ca", "issue", "--id", ID, "--csr", str(csr), "--data", str(data)]) == 0
    cert_pem = capsys.readouterr().out.encode()
    assert main(["ca", "bundle", "--data", str(data)]) == 0
    bundle = capsys.readouterr().out.encode()
    assert bundle == (data / "ca" / "ca.pem").read_bytes()
    assert verify_peer_svid(cert_pem, bundle, datetime.now(UTC)) == parse(ID)

    out = tmp_path / "svid.pem"
    args = ["ca", "issue", "--id", ID, "--csr", str(csr), "--ttl", "1h", "--out", str(out)]
    assert main([*args, "--data", str(data)]) == 0
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 3900


def test_issue_errors(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pem"
    assert main(["ca", "issue", "--id", ID, "--csr", str(missing), "--data", str(data)]) == 2
    assert f"--csr: cannot read {missing}: No such file or directory" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a csr")
    assert main(["ca", "issue", "--id", ID, "--csr", str(garbage), "--data", str(data)]) == 2
    assert "not a PEM certificate signing request" in capsys.readouterr().err


def test_the_commands_as_the_issue_writes_them_use_the_default_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ca init --trust-domain TD` then `ca token --id … --ttl 10m`, no --data: the same
    ./auditmesh-data as `auditmesh server` and `auditmesh log` use."""
    monkeypatch.chdir(tmp_path)
    assert main(["ca", "init", "--trust-domain", "example.org"]) == 0
    assert main(["ca", "token", "--id", ID, "--ttl", "10m"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert JoinTokens(tmp_path / "auditmesh-data").redeem(token, datetime.now(UTC)) == parse(ID)
