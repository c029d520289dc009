"""Every command's --help explains each of its arguments to a newcomer."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from auditmesh.cli.main import build_parser, main


def _commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def test_every_argument_of_every_command_has_help() -> None:
    # `bundle verify FILE` had none: --help listed a bare FILE
    missing = [
        f"auditmesh {' '.join(words)}: {'/'.join(action.option_strings) or action.dest}"
        for words, parser in _commands(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
        and not (action.help or "").strip()
    ]
    assert missing == []


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # as one line: no wrapping in the way


@pytest.mark.parametrize("command", [["query"], ["bundle", "create"]])
def test_source_and_dest_both_name_unknown(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # --dest matches `unknown` as --source does (analysis/query.py), but its help left it out
    text = _help(command, capsys)
    party = "SPIFFE ID, service name, service.namespace, or unknown (no identity, no service)"
    assert f"--source SOURCE caller: {party}" in text
    assert f"--dest DEST callee: {party}" in text


@pytest.mark.parametrize("mesh", ["envoy", "linkerd"])
def test_ingest_names_its_server_url_as_the_other_commands_do(
    mesh: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(["ingest", mesh], capsys)
    assert "[--url URL]" in text and "--url URL, --server URL" in text
    assert "--server URL is an older spelling, still accepted" in text


@pytest.mark.parametrize(
    ("command", "since"),
    [
        (["query"], "--since SINCE at or after: "),
        (["graph"], "--since SINCE "),
        (["bundle", "create"], "--since SINCE at or after: "),
        (["findings"], "--since SINCE "),
        (["export", "ecs"], "--since SINCE only events at or after: "),
        (["policy", "replay"], "--since WHEN start of the window: "),
    ],
)
def test_since_says_a_plain_date_is_taken(
    command: list[str], since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # parse_time takes 2026-11-29 (that day's midnight UTC), as README says, but the help
    # listed only "15m, 2h, 7d or an RFC 3339 time"
    text = _help(command, capsys)
    assert f"{since}15m, 2h, 7d, a date (2026-11-29: its midnight UTC) or an RFC 3339" in text


def test_ingest_help_says_a_refused_line_makes_the_exit_status_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a run that took some lines and refused others exits 1 (cli/ingest.py), unsaid in --help
    for mesh in ("envoy", "linkerd"):
        text = _help(["ingest", mesh], capsys)
        assert "Exit status: 0 when every line was taken" in text, mesh
        assert "1 when any line was refused, though the others were taken" in text, mesh
