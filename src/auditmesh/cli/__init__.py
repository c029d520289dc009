"""Command-line interface: one module per command group, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import errno
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from auditmesh.cli.main import UserError

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


def server_url(text: str) -> str:
    """argparse `type=` for a running server's URL (`--url`, and `ingest --server`, its older
    spelling): http or https with a host, refused at parsing rather than retried
    (`127.0.0.1:7600` has no scheme)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f", e.g. http://{text.strip()}" if "://" not in text and text.strip() else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a server URL: it needs http:// or https:// and a host{hint}, "
            "as `auditmesh server` prints it"
        )
    return text.strip()


def positive_int(text: str) -> int:
    """argparse `type=` for a count of at least 1 (--batch, --attempts, --examples)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse `type=` for a length of time in seconds, more than 0 (--poll, --timeout)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def output_dir(path: Path, flag: str) -> Path:
    """The directory a command writes into (`--bundle DIR`, `--data DIR`), created if need be
    and checked before the work, so that a path that cannot hold files is the user's to fix
    (`FLAG: …`), not a traceback after the work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag}: {path} exists and is not a directory") from None
    except OSError as exc:
        raise UserError(f"{flag}: cannot create the directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write in {path}: {os.strerror(errno.EACCES)}")
    return path


def writable_file(path: Path, flag: str) -> Path:
    """Check before the work that a command can write its output file (`-o FILE`): not a
    directory, in one that exists and may be written. `write_output` still reports what
    only the write finds out (a full disk, a read-only mount)."""
    parent = path.parent
    if path.is_dir():
        raise UserError(f"{flag}: cannot write {path}: {os.strerror(errno.EISDIR)}")
    if not parent.is_dir():
        missing = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"{flag}: cannot write {path}: {parent} {missing}")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise UserError(f"{flag}: cannot write {path}: {os.strerror(errno.EACCES)}")
    return path


def write_output(path: Path, data: bytes | str, flag: str) -> None:
    """Write a command's output file; a failure is a UserError naming the option."""
    try:
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"{flag}: cannot write {path}: {exc.strerror or exc}") from None


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
