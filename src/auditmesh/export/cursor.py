"""An exporter's resume position: the next ledger index to send, kept in a small file.

Place in the house: used by `auditmesh export` (cli/export.py). An exporter saves the cursor
only after its receiver acknowledged everything before it, so a restart sends nothing twice
and skips nothing (at-least-once would resend at most the batch in flight when it died; the
file is replaced atomically, so it is never half-written).

The file is JSON: the next index, the log's origin and the leaf hash of the last exported
entry (so a cursor is refused for a different log, or for a log rebuilt under the same name),
and the target it belongs to (an endpoint URL or an output file). For a file, it also keeps
the file's length at that point: a run that died mid-batch may have left part of a line
after it, which the next run cuts off before it writes that batch again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from auditmesh.fsutil import write_atomic

FORMAT = 1


class CursorError(ValueError):
    """The cursor file is unreadable or belongs to another log or target."""


@dataclass(frozen=True, slots=True)
class Cursor:
    next_index: int
    origin: str
    target: str
    last_leaf: str = ""  # hex RFC 9162 leaf hash of entry next_index - 1; "" at 0
    output_size: int | None = None  # a file target's length once all before was written


def check_cursor(cursor: Cursor, *, origin: str, target: str, leaf_at: str | None) -> None:
    """Raise `CursorError` unless `cursor` fits this log and target.

    `leaf_at` is the hex leaf hash the log holds at `cursor.next_index - 1` (None when the
    log is shorter than that).
    """
    if cursor.origin != origin:
        raise CursorError(f"cursor belongs to the log {cursor.origin!r}, not {origin!r}")
    if cursor.target != target:
        raise CursorError(
            f"cursor belongs to {cursor.target!r}, not {target!r}; use another cursor file"
        )
    if cursor.next_index > 0 and leaf_at is None:
        raise CursorError(
            f"cursor is at index {cursor.next_index} but the log is shorter: not the same log"
        )
    if cursor.next_index > 0 and leaf_at != cursor.last_leaf:
        raise CursorError(
            f"entry {cursor.next_index - 1} has leaf hash {leaf_at}, the cursor recorded "
            f"{cursor.last_leaf}: the log was rewritten or replaced"
        )


def load_cursor(path: Path) -> Cursor | None:
    """The saved cursor, or None when there is no file yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(data)  # a file that is not UTF-8 text: UnicodeDecodeError, caught
        if raw.get("format") != FORMAT:
            raise CursorError(f"{path}: unknown cursor format {raw.get('format')!r}")
        cursor = Cursor(
            next_index=int(raw["next_index"]),
            origin=str(raw["origin"]),
            target=str(raw["target"]),
            last_leaf=str(raw.get("last_leaf", "")),
            output_size=None if raw.get("output_size") is None else int(raw["output_size"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CursorError(f"{path} is not a cursor file: {exc}") from None
    if cursor.next_index < 0:
        raise CursorError(f"{path}: negative index {cursor.next_index}")
    return cursor


def save_cursor(path: Path, cursor: Cursor) -> None:
    """Replace the file atomically and durably: temp file, fsync, rename, fsync directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"format": FORMAT, **asdict(cursor)}, sort_keys=True) + "\n"
    write_atomic(path, body.encode())
