"""Command-line interface: one module per command group, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

DEFAULT_DATA = Path("auditmesh-data")
"""Where every command finds the server's data directory unless told (`--data DIR`)."""


def add_data_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"data directory (default ./{DEFAULT_DATA})"
    )


def verifier_key(value: str) -> str:
    """`--key`: the verifier key itself (`name+hash+base64`, sumdb/note) or a file holding it,
    such as DATA/keys/log.vkey."""
    path = Path(value)
    if "+" in value and not path.is_file():  # a key has them: `name+hash+base64`
        return value.strip()
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a verifier key (name+hash+base64) and cannot be read as a key "
            f"file: {exc.strerror}"
        ) from None


def progress_bar(label: str, *, enabled: bool = True, count_bytes: bool = False) -> Progress:
    """The bar long commands draw on stderr ("verifying ━━━ 3,000/10,000 0:00:04"): shown only
    on a terminal and when `enabled`, and erased when done so the summary line stands alone."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn() if count_bytes else MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or not console.is_terminal,
        transient=True,
    )
