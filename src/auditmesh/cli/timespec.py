"""Time arguments: `--since 15m` (a duration before now), an RFC 3339 timestamp or a date."""

from __future__ import annotations

from auditmesh.analysis.query import QueryError, check_window, parse_time
from auditmesh.cli.main import UserError
from auditmesh.durations import EXAMPLES, duration_s

# What every --since and --until takes (`parse_time_ns`), as their help says it.
TIME_HELP = "15m, 2h, 7d, a date (2026-11-29: its midnight UTC) or an RFC 3339 time"


def parse_duration_s(text: str) -> int:
    seconds = duration_s(text)
    if seconds is None:
        raise UserError(f"{text!r} is not a duration like {EXAMPLES}")
    return seconds


# A bare number is Unix nanoseconds; one of 10 or 13 digits is what `date +%s` (seconds) and
# JavaScript's Date.now() (milliseconds) print, hours after 1970 as nanoseconds.
_UNITS = {10: ("seconds", 10**9), 13: ("milliseconds", 10**6)}


def parse_time_ns(text: str, now_ns: int, flag: str = "--since") -> int:
    """A duration means that long before `now_ns`; otherwise an RFC 3339 timestamp (or Unix
    nanoseconds): `analysis.query.parse_time`, its errors as the CLI's, naming `flag`. Unix
    seconds or milliseconds given by mistake are refused, with the nanoseconds they mean."""
    digits = text.strip()
    if digits.isascii() and digits.isdigit() and len(digits) in _UNITS:
        unit, scale = _UNITS[len(digits)]
        raise UserError(
            f"{flag}: {digits} looks like Unix {unit}, but a number here is Unix "
            f"nanoseconds (this one is in January 1970): write {int(digits) * scale}, or an "
            "RFC 3339 time such as 2026-11-28T10:00:00Z"
        )
    try:
        return parse_time(text, now_ns, "time")
    except QueryError as exc:
        raise UserError(f"{flag}: {str(exc).removeprefix('time: ')}") from None


def parse_window_ns(
    since: str | None, until: str | None, now_ns: int, *, open_ended: bool = False
) -> tuple[int | None, int | None]:
    """`--since` and `--until` (either may be absent); an empty window is an error. Without
    --until the window ends now, unless `open_ended` (a query of events: a producer's clock
    may run ahead of this one, so a --since after now may still find some)."""
    since_ns = None if since is None else parse_time_ns(since, now_ns, "--since")
    until_ns = None if until is None else parse_time_ns(until, now_ns, "--until")
    try:
        if until_ns is not None:
            check_window(since_ns, until_ns)
        elif not open_ended:
            check_window(since_ns, now_ns, until_is_now=True)
    except QueryError as exc:
        raise UserError(f"--{exc}".replace(" since (", " --since (")) from None
    return since_ns, until_ns
