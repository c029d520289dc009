"""Evidence bundles: created from a query, verified offline, tampering refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.ledger.note import generate_key
from tests.conftest import fill, generate


@pytest.fixture
def bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    fill(ledger, generate(400))
    vkey = ledger.vkey
    ledger.close()
    out = tmp_path / "evidence.zip"
    code = main(
        ["bundle", "create", "--data", str(tmp_path / "data"), "--status", "403"] + ["-o", str(out)]
    )
    assert code == 0
    assert "auditmesh bundle verify" in capsys.readouterr().out
    return out, vkey


def verify(path: Path, key: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["bundle", "verify", str(path), "--key", key])
    return code, capsys.readouterr().out


def test_bundle_verifies_offline(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, vkey = bundle
    names = zipfile.ZipFile(path).namelist()
    assert {"README.md", "manifest.json", "checkpoint", "log.vkey"} <= set(names)
    code, out = verify(path, vkey, capsys)
    assert code == 0 and "proven included" in out


def rewrite(path: Path, change: dict[str, bytes]) -> None:
    original = zipfile.ZipFile(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name in original.namelist():
            out.writestr(name, change.get(name, original.read(name)))
    path.write_bytes(buffer.getvalue())


def test_edited_event_fails(bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, vkey = bundle
    entry = next(n for n in zipfile.ZipFile(path).namelist() if n.startswith("entries/"))
    data = zipfile.ZipFile(path).read(entry)
    rewrite(path, {entry: data.replace(b'"status":403', b'"status":200')})
    code, out = verify(path, vkey, capsys)
    assert code == 1 and "FAILED" in out and entry in out


def test_wrong_key_fails(bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = bundle
    _, other = generate_key("test.auditmesh/log")
    code, out = verify(path, other, capsys)
    assert code == 1 and "FAILED" in out


def test_not_a_bundle(
    tmp_path: Path, bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"hello")
    code, out = verify(junk, bundle[1], capsys)
    assert code == 1 and "not an evidence bundle" in out


def test_bad_key_text_is_a_usage_error(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bundle", "verify", str(bundle[0]), "--key", "nonsense"]) == 2
    assert "bad verifier key" in capsys.readouterr().err
