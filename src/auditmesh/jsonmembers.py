"""Repeated member names in JSON: RFC 8259 §4 says names SHOULD be unique, and parsers that
meet a repeated one keep either value. A signed or proven document that repeats a name can
so say two things at once; readers of evidence refuse it (`log verify-proof --event`,
`bundle verify`'s manifest)."""

from __future__ import annotations

import json


def repeated_member(raw: bytes) -> str | None:
    """The first member name an object of the JSON in `raw` repeats; None if none does, or
    if `raw` is not JSON (the caller's own parser reports that)."""
    repeated: list[str] = []

    def pairs(members: list[tuple[str, object]]) -> dict[str, object]:
        names = [name for name, _ in members]
        repeated.extend(name for i, name in enumerate(names) if name in names[:i])
        return dict(members)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return repeated[0] if repeated else None
