"""W3C Trace Context for the sidecar: continue the caller's trace or start one.

`traceparent` = version "-" trace-id "-" parent-id "-" flags (W3C Trace Context §3.2).
Invalid headers are replaced, as §3.2.2 requires of a vendor that cannot parse them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class SpanContext:
    trace_id: str
    span_id: str  # this hop's span
    parent_span_id: str | None  # the caller's span, when the trace was continued
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def continue_or_start(header: str | None, random_hex: Callable[[int], str]) -> SpanContext:
    """A new span under the incoming `traceparent`, or the root of a new trace."""
    if header is not None:
        match = _TRACEPARENT.match(header.strip().lower())
        # §3.2.2.1: version ff is invalid; all-zero ids are invalid (§3.2.2.3, §3.2.2.4)
        if match and match[1] != "ff" and match[2] != _ZERO_TRACE and match[3] != _ZERO_SPAN:
            return SpanContext(match[2], random_hex(8), match[3], match[4])
    return SpanContext(random_hex(16), random_hex(8), None)
