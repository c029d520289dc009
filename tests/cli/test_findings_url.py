"""`auditmesh findings --url`: the findings of a running server (GET /v1/findings), printed as
the local read of its data directory prints them, and the errors `query --url` gives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import auditmesh.cli.findings as cli_findings
from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.serverproc import ServerProcess, free_port
from tests.cli.test_findings_table import troubled
from tests.conftest import fill

pytestmark = pytest.mark.integration
# the events of `troubled` are within the first minute after 2025-11-28T03:20:00Z; the reads
# the server records for the tests (audit_read, at the time of the test) are not in it
WINDOW = ["--since", "2025-11-28T03:00:00Z", "--until", "2025-11-28T04:00:00Z"]
DAY_NS = 86_400 * 1_000_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("findings-url") / "data"
    ledger = open_ledger(data, origin="test.auditmesh/findings-url")
    fill(ledger, troubled())
    ledger.close()
    with ServerProcess(data, extra=["--mesh-listen", "off", "--otlp-grpc", "off"]) as running:
        yield running


def token(server: ServerProcess) -> str:
    return (server.data_dir / "keys" / "api.token").read_text().strip()


def out_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize("window", [[], WINDOW], ids=["all", "window"])
def test_the_json_over_http_is_the_local_json(
    server: ServerProcess,
    window: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = out_of(
        ["findings", "--data", str(server.data_dir), *window, "--format", "json"], capsys
    )
    kinds = {f["kind"] for f in json.loads(local)}
    assert {"error_burst", "repeated_denials", "plaintext_calls", "failed_authentication"} <= kinds
    monkeypatch.setenv("AUDITMESH_TOKEN", token(server))  # the token as query takes it
    assert out_of(["findings", "--url", server.url, *window, "--format", "json"], capsys) == local


def test_the_table_over_http_is_the_local_table(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    local = out_of(["findings", "--data", str(server.data_dir), *WINDOW], capsys)
    assert "finding(s) over" in local and "batch-report.shop" in local
    remote = ["findings", "--url", server.url, "--token", token(server), *WINDOW]
    assert out_of(remote, capsys) == local


def test_without_a_token_or_with_a_wrong_one_the_error_says_which_token(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDITMESH_TOKEN", raising=False)
    assert "needs the API token: --token T or AUDITMESH_TOKEN=T" in error_of(
        ["findings", "--url", server.url], capsys
    )
    wrong = error_of(["findings", "--url", server.url, "--token", "nope"], capsys)
    assert wrong.startswith(f"auditmesh: error: {server.url}/v1/findings: 401 ")


def test_a_server_not_there_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    err = error_of(["findings", "--url", url, "--token", "t"], capsys)
    assert err.startswith(f"auditmesh: error: cannot reach {url}: ")


def test_a_window_the_server_refuses_is_its_400(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a clock a day ahead of the server's: its --since 1h is in the server's future
    ahead = time.time_ns() + DAY_NS
    monkeypatch.setattr(cli_findings, "time", SimpleNamespace(time_ns=lambda: ahead))
    err = error_of(
        ["findings", "--url", server.url, "--token", token(server), "--since", "1h"], capsys
    )
    assert err.startswith(f"auditmesh: error: {server.url}/v1/findings: 400 since (")
    assert "is in the future" in err


def test_bundles_are_written_from_the_data_directory_only(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["findings", "--url", server.url, "--token", "t", "--bundle", str(tmp_path / "b")]
    assert "--bundle reads the ledger itself: give --data DIR" in error_of(argv, capsys)
    assert not (tmp_path / "b").exists()
