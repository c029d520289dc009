"""Time arguments: `--since 15m` (a duration before now) or an RFC 3339 timestamp."""

from __future__ import annotations

from auditmesh.analysis.query import QueryError, duration_s, parse_time
from auditmesh.cli.main import UserError


def parse_duration_s(text: str) -> int:
    seconds = duration_s(text)
    if seconds is None:
        raise UserError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    return seconds


def parse_time_ns(text: str, now_ns: int) -> int:
    """A duration means that long before `now_ns`; otherwise an RFC 3339 timestamp (or Unix
    nanoseconds): `analysis.query.parse_time`, its errors as the CLI's."""
    try:
        return parse_time(text, now_ns, "time")
    except QueryError as exc:
        raise UserError(str(exc).removeprefix("time: ")) from None
