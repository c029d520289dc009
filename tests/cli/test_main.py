"""The entry point builds only the command group asked for, and everything for --help."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditmesh.cli.main import GROUPS, build_parser, groups_for, main


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


@pytest.mark.parametrize(
    ("argv", "groups"),
    [
        (["log", "verify"], ("log",)),
        (["trace", "abc"], ("query",)),
        (["graph"], ("query",)),
        (["query", "--dest", "x"], ("query",)),
        (["--help"], GROUPS),
        ([], GROUPS),
        (["nosuch"], GROUPS),
    ],
)
def test_groups_for_a_command(argv: list[str], groups: tuple[str, ...]) -> None:
    assert groups_for(argv) == groups


def test_every_command_is_in_the_group_built_for_it() -> None:
    commands = _commands(build_parser())
    assert {"demo", "server", "log", "trace", "graph", "export"} <= commands
    for command in commands:
        assert command in _commands(build_parser(groups_for([command]))), command


def _parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser, by its words: {"log verify": …}."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[name] = child
                found.update({f"{name} {k}": v for k, v in _parsers(child).items()})
    return found


def test_help_shows_the_defaults_that_say_something() -> None:
    parsers = _parsers(build_parser())
    assert {"log verify", "query", "export otlp"} <= set(parsers)
    for words, parser in parsers.items():
        text = " ".join(parser.format_help().split())
        for empty in ("(default: None)", "(default: [])", "(default: False)"):
            assert empty not in text, f"{words}: {empty}"
    query = " ".join(parsers["query"].format_help().split())
    assert "output format (default: table)" in query
    assert "which events come first (default: newest)" in query
    assert "at most this many (default 100)" in query  # said in its own words: not twice
    assert "redeemed, at most 30d: e.g. 30m or 2h (default: 10m)" in " ".join(
        parsers["ca token"].format_help().split()
    )
    assert "file to write, or - for stdout (default: -)" in " ".join(
        parsers["export ecs"].format_help().split()
    )


def test_a_command_does_not_import_the_others() -> None:
    code = (
        "import sys\n"
        "from auditmesh.cli.main import main\n"
        "main(['log', 'checkpoint', '--data', sys.argv[1]])\n"
        "print('auditmesh.server.app' in sys.modules, 'auditmesh.cli.log' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "/nonexistent/auditmesh-data"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip().splitlines()[-1] == "False True", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["server", "--bogus"], "usage: auditmesh server "),
        (["log", "verify", "--bogus"], "usage: auditmesh log verify "),
        (["bundle", "create", "-o", "x.zip", "--bogus"], "usage: auditmesh bundle create "),
        (["--bogus"], "usage: auditmesh [-h] COMMAND"),
    ],
)
def test_an_unknown_flag_shows_its_commands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "unrecognized arguments: --bogus" in err


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `auditmesh policy check DIR | head -1`: the pipe closes while we still write.
    policies = Path(__file__).parents[1] / "policy" / "data" / "fields.yaml"
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first write: EPIPE, deterministically
    try:
        done = subprocess.run(
            [sys.executable, "-m", "auditmesh", "policy", "check", str(policies)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
