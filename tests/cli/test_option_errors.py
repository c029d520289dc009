"""A value the user typed wrong is refused in one line that names the option they typed it in
(`--mesh-listen`, not `--listen`; `--status`, not `status`), before any work or retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.cli import server_url
from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from tests.conftest import fill, generate


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("options") / "data"
    ledger = open_ledger(path, origin="test.auditmesh/options")
    fill(ledger, generate(50), checkpoint_every=50)
    ledger.close()
    return path


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("auditmesh: error: "), err
    return err.removeprefix("auditmesh: error: ").strip()


def parse_error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's refusal: usage, then `auditmesh …: error: …`, exit 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# -- server: each address and duration option named as typed -----------------------------


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--listen", "bogus", "--listen wants HOST:PORT, e.g. 127.0.0.1:7600, not 'bogus'"),
        (
            "--mesh-listen",
            "bogus",
            "--mesh-listen wants HOST:PORT, e.g. 127.0.0.1:7443 (or off), not 'bogus'",
        ),
        (
            "--otlp-grpc",
            "1.2.3",
            "--otlp-grpc wants HOST:PORT, e.g. 127.0.0.1:4317 (or off), not '1.2.3'",
        ),
        ("--svid-ttl", "0s", "--svid-ttl: invalid duration '0s': it must be longer than zero"),
    ],
    ids=["listen", "mesh-listen", "otlp-grpc", "svid-ttl"],
)
def test_server_names_the_option_it_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    # before this, a bad --mesh-listen or --otlp-grpc was reported as a bad --listen
    data = tmp_path / "data"
    assert error_of(["server", "--data", str(data), option, value], capsys) == expected
    assert not data.exists()  # refused before the data directory is made


# -- a server's URL without its scheme ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--url", "127.0.0.1:7600", "--token", "t"],
        ["trace", "01234567", "--url", "127.0.0.1:7600", "--token", "t"],
        ["log", "checkpoint", "--url", "127.0.0.1:7600"],
        ["log", "verify", "--url", "127.0.0.1:7600", "--key", "k+00000000+AAAA"],
    ],
    ids=["query", "trace", "log-checkpoint", "log-verify"],
)
def test_a_url_without_scheme_is_refused_at_parsing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # before this: "cannot reach 127.0.0.1:7600/: Request URL is missing an 'http://' …"
    assert parse_error_of(argv, capsys).endswith(
        "error: argument --url: '127.0.0.1:7600' is not a server URL: it needs http:// or "
        "https:// and a host, e.g. http://127.0.0.1:7600, as `auditmesh server` prints it"
    )


def test_ingest_server_without_scheme_is_refused_before_any_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # before this, ingest retried the scheme-less URL and then asked whether a server ran there
    log = tmp_path / "access.log"
    log.write_text("")
    for option in ("--url", "--server"):  # --server: its older spelling, still taken
        argv = ["ingest", "envoy", str(log), option, "localhost:7600", "--quiet"]
        assert parse_error_of(argv, capsys).endswith(
            "error: argument --url/--server: 'localhost:7600' is not a server URL: it needs "
            "http:// or https:// and a host, e.g. http://localhost:7600, as `auditmesh server` "
            "prints it"
        )
    assert not (tmp_path / "access.log.rejects").exists()


def test_server_url_type() -> None:
    for good in ("http://127.0.0.1:7600", "https://audit.example:443/", " http://h "):
        assert server_url(good) == good.strip()
    for bad in ("127.0.0.1:7600", "ftp://h", "http://", "", "http:/h"):
        with pytest.raises(Exception, match="is not a server URL"):
            server_url(bad)


# -- query and bundle create: the filter that is wrong is named as an option ---------------


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["--status", "6xx"], "--status: '6xx' is not an HTTP status (404) or class (5xx)"),
        (["--trace", "zz"], "--trace: 'zz' is not a trace id"),
        (["--path", ""], "--path: give a path or a prefix ending in *"),
        (["--limit", "0"], "--limit: give at least 1, not 0"),
        (["--cursor", "abc"], "--cursor: not a cursor this server issued"),
        (["--since", "1x"], "--since: '1x' is neither a duration"),
        (["--until", "tomorrow"], "--until: 'tomorrow' is neither a duration"),
        # a bare number is nanoseconds: `date +%s` output used to select from January 1970
        (
            ["--since", "1764300000"],
            "--since: 1764300000 looks like Unix seconds, but a number here is Unix "
            "nanoseconds (this one is in January 1970): write 1764300000000000000, or",
        ),
        (["--until", "1764300000000"], "--until: 1764300000000 looks like Unix milliseconds"),
    ],
    ids=["status", "trace", "path", "limit", "cursor", "since", "until", "seconds", "millis"],
)
def test_query_names_the_option_it_refuses(
    data: Path, capsys: pytest.CaptureFixture[str], words: list[str], expected: str
) -> None:
    assert error_of(["query", "--data", str(data), *words], capsys).startswith(expected)


def test_bundle_create_names_the_option_it_refuses(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.zip"
    argv = ["bundle", "create", "--data", str(data), "-o", str(out), "--status", "6xx"]
    assert error_of(argv, capsys) == "--status: '6xx' is not an HTTP status (404) or class (5xx)"
    assert not out.exists()


@pytest.mark.parametrize("command", [["findings"], ["export", "ecs"]])
def test_times_elsewhere_name_their_option(
    data: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    argv = [*command, "--data", str(data), "--since", "yesterday"]
    assert error_of(argv, capsys).startswith("--since: 'yesterday' is neither a duration")
