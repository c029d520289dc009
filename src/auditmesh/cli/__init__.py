"""Command-line interface: one module per command group, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
from pathlib import Path

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
