"""Time arguments: `--since 15m` (a duration before now) or an RFC 3339 timestamp."""

from __future__ import annotations

import re

from auditmesh.analysis.query import QueryError, parse_time
from auditmesh.cli.main import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration_s(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise UserError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_time_ns(text: str, now_ns: int) -> int:
    """A duration means that long before `now_ns`; otherwise an RFC 3339 timestamp (or Unix
    nanoseconds): `analysis.query.parse_time`, its errors as the CLI's."""
    try:
        return parse_time(text, now_ns, "time")
    except QueryError as exc:
        raise UserError(str(exc).removeprefix("time: ")) from None
