"""Time arguments: `--since 15m` (a duration before now) or an RFC 3339 timestamp."""

from __future__ import annotations

import re
from datetime import datetime

from auditmesh.cli.main import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration_s(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise UserError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_time_ns(text: str, now_ns: int) -> int:
    """A duration means that long before `now_ns`; otherwise an RFC 3339 timestamp."""
    if _DURATION.match(text.strip()):
        return _in_range(text, now_ns - parse_duration_s(text) * 1_000_000_000)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{text!r} is neither a duration (15m) nor a timestamp (2026-11-28T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise UserError(f"{text!r} needs a time zone, e.g. 2026-11-28T10:00:00Z")
    try:
        seconds = int(moment.timestamp())
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+14:00
        return _in_range(text, -(2**64))
    return _in_range(text, seconds * 1_000_000_000 + moment.microsecond * 1000)


def _in_range(text: str, ns: int) -> int:
    """Event times are Unix nanoseconds in 64 bits: 1677-09-21 to 2262-04-11."""
    if not -(2**63) <= ns < 2**63:
        raise UserError(f"{text!r} is out of range: times go from 1677 to 2262")
    return ns
