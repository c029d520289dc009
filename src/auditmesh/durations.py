"""Durations as people type them: `30s`, `15m`, `2h`, `7d`, `2w`, or several at once, `1h30m`.

One reading for every place that takes one (`--since 1h30m`, `?since=90m`, `ca token --ttl
1h30m`, `server --svid-ttl 24h`). Units largest first, each at most once; no fractions (a
duration is whole seconds); `M` is not months (nor minutes): a month has no fixed length.
"""

from __future__ import annotations

import re

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
# at most 12 digits a unit: enough for any span a clock counts, and no 5,000-digit integer
_DURATION = re.compile(
    r"(?:(\d{1,12})w)?(?:(\d{1,12})d)?(?:(\d{1,12})h)?(?:(\d{1,12})m)?(?:(\d{1,12})s)?"
)
EXAMPLES = "30s, 15m, 2h, 7d, 2w or 1h30m"


def duration_s(text: str) -> int | None:
    """Seconds in `text`, or None when it is not a duration."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        return None
    return sum(int(n) * unit for n, unit in zip(match.groups(), _UNITS.values(), strict=True) if n)
