"""`auditmesh` entry point: builds the argument parser from the command-group modules.

Each group module exposes ``register(subparsers)``; a registered command sets
``func=callable(args) -> int`` (the exit code) with ``parser.set_defaults``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

# Command-group modules under auditmesh.cli, in the order `--help` lists them.
GROUPS: tuple[str, ...] = (
    "demo",
    "server",
    "sidecar",
    "query",  # query, trace, graph (cli/query.py)
    "findings",
    "log",
    "bundle",
    "ca",
    "policy",
    "ingest",
    "export",
)


# Commands registered by a group of another name; every other command is its group's name.
COMMAND_GROUP: dict[str, str] = {"trace": "query", "graph": "query"}


class UserError(Exception):
    """A problem the person at the keyboard can fix; printed without a traceback."""


class DefaultsShown(argparse.HelpFormatter):
    """Ends an option's help with its default, where there is one worth saying and the help
    does not say it already (most write "(default 100)" in their own words)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (
            not text
            or text == argparse.SUPPRESS
            or not action.option_strings  # a positional: required, no default
            or default is None
            or isinstance(default, bool)  # a flag: off unless given
            or default in ([], ())  # repeatable, none unless given
            or default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every command's parser: shows defaults; subcommands' parsers are made of this class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsShown)
        super().__init__(*args, **kwargs)


def build_parser(groups: Sequence[str] = GROUPS) -> argparse.ArgumentParser:
    parser = Parser(
        prog="auditmesh",
        description="Tamper-evident audit trail for service-to-service calls.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in groups:
        module = importlib.import_module(f"auditmesh.cli.{name}")
        module.register(sub)
    return parser


def groups_for(argv: Sequence[str]) -> tuple[str, ...]:
    """Only the group of the command asked for: importing every group (the server, the demo,
    the sidecar and their libraries) costs about a second before any command starts."""
    if argv and not argv[0].startswith("-"):
        group = COMMAND_GROUP.get(argv[0], argv[0])
        if group in GROUPS:
            return (group,)
    return GROUPS  # --help, no command, or an unknown one: the full list


def chosen_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command `argv` names, e.g. `log verify`'s for `log verify …`."""
    for word in argv:
        commands = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        if commands is None:
            break
        if word in commands.choices:
            parser = commands.choices[word]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(groups_for(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, not the top level's (`usage: auditmesh COMMAND`)
        chosen_parser(parser, argv).error(f"unrecognized arguments: {' '.join(unknown)}")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code: int = func(args)
        sys.stdout.flush()  # here, so that a reader gone (below) is not an error at exit
    except UserError as exc:
        print(f"auditmesh: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `auditmesh … | head`: the reader has what it wanted
        # Python docs, "Note on SIGPIPE": point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command a pipe cut short
    return code


if __name__ == "__main__":
    sys.exit(main())
