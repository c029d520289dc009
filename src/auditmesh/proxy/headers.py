"""Header fields for the sans-IO HTTP/1.1 core: grammar, parsing, rendering and editing helpers.

Place in the house: :mod:`auditmesh.proxy.http1` parses received header and trailer sections
and validates the ones it sends with the grammar here; the sidecar edits what it forwards with
the helpers (hop-by-hop removal per RFC 9110 §7.6.1, x-forwarded-client-cert, traceparent).

A header section is :data:`Headers`: a tuple of ``(lowercased name, value)`` byte pairs in wire
order. Helpers never mutate, they return a new tuple. Validation is done by C regular
expressions over a whole section at a time, never by a Python loop over bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from auditmesh.proxy.http1_events import Headers, RemoteProtocolError

__all__ = [
    "Headers",
    "add_header",
    "explain_sent_section",
    "get_all",
    "get_header",
    "header_tokens",
    "hop_by_hop",
    "parse_field_section",
    "remove_headers",
    "render_headers",
    "set_header",
    "split_tokens",
    "strip_hop_by_hop",
    "valid_field_section",
]

# RFC 9110 §5.6.2: token = 1*tchar
TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN_RE: Final = re.compile(rb"[" + TCHAR + rb"]+")
# RFC 9110 §5.5: field-value = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
#   field-vchar = VCHAR / obs-text       (so no CR, LF, NUL or other controls: no injection)
# Surrounding whitespace is OWS (RFC 9112 §5), stripped from received values.

# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS, each line ending in CRLF.
# One anchored findall extracts every line; the section is valid iff every line matched, i.e. the
# match count equals the CRLF count and every LF belongs to a CRLF (no bare LF, RFC 9112 §2.2).
# A bare CR, a control character, obs-fold (RFC 9112 §5.2) or whitespace before the colon
# (RFC 9112 §5.1, a smuggling vector) makes its line fail to match, so the counts differ.
_FIELD_LINE: Final = re.compile(
    rb"^([" + TCHAR + rb"]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n", re.MULTILINE
)
_RECEIVED_LINE: Final = re.compile(rb"([" + TCHAR + rb"]+):[\t\x20-\x7e\x80-\xff]*")
# What we send: lowercased token names (the Headers contract), no CR/LF/NUL in values. Leading
# or trailing whitespace in a value is sent as is (it is OWS on the wire, RFC 9112 §5).
_SENT_SECTION: Final = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9a-z]+: [\t\x20-\x7e\x80-\xff]*\r\n)*")


def _show(raw: bytes, limit: int = 60) -> str:
    return repr(raw[:limit]) + ("…" if len(raw) > limit else "")


def _explain(section: bytes) -> str:
    """Name the first bad field line of a section that failed validation (error path only)."""
    for line in section.split(b"\r\n"):
        if _RECEIVED_LINE.fullmatch(line):
            continue
        if line[:1] in (b" ", b"\t"):
            return f"obsolete line folding in {_show(line)} (RFC 9112 §5.2)"
        if b"\n" in line or b"\r" in line:
            return f"bare CR or LF in header line {_show(line)} (RFC 9112 §2.2)"
        name, colon, _ = line.partition(b":")
        if not colon:
            return f"header line without a colon: {_show(line)} (RFC 9112 §5)"
        if name and name.rstrip(b" \t") != name:
            return f"whitespace between field name and colon in {_show(line)} (RFC 9112 §5.1)"
        if not TOKEN_RE.fullmatch(name):
            return f"invalid field name {_show(name)} (RFC 9110 §5.1)"
        return f"invalid character in the value of field {_show(name)} (RFC 9110 §5.5)"
    return "malformed header section: a line without CRLF (RFC 9112 §5)"


def parse_field_section(section: bytes, max_fields: int) -> Headers:
    """Parse field lines (each ending in CRLF, the final empty line excluded) into Headers.

    Raises RemoteProtocolError(400) naming the bad line, or (431) above ``max_fields`` lines.
    """
    count = section.count(b"\r\n")
    if count > max_fields:
        raise RemoteProtocolError(431, f"{count} header fields, more than the limit {max_fields}")
    fields = _FIELD_LINE.findall(section)
    if len(fields) != count or section.count(b"\n") != count or section[-1:] not in (b"", b"\n"):
        raise RemoteProtocolError(400, _explain(section))
    if b" \r\n" in section or b"\t\r\n" in section:
        # Rare: trailing OWS is not part of the value (RFC 9112 §5).
        return tuple([(name.lower(), value.rstrip(b" \t")) for name, value in fields])
    return tuple([(name.lower(), value) for name, value in fields])


def render_headers(headers: Headers) -> bytes:
    """The field lines of ``headers`` as sent: ``name: value`` CRLF each, no final empty line."""
    return b"".join([b"%s: %s\r\n" % field for field in headers])


def valid_field_section(rendered: bytes) -> bool:
    """Whether rendered field lines are safe to send: lowercased token names, no CR/LF/NUL
    or other control characters in values (RFC 9110 §5.1, §5.5: no header injection)."""
    return _SENT_SECTION.fullmatch(rendered) is not None


def explain_sent_section(headers: Headers) -> str:
    """Name the first field of ``headers`` that :func:`valid_field_section` refuses."""
    for name, value in headers:
        if not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9a-z]+", name):
            return f"invalid or not lowercased field name {_show(name)} (RFC 9110 §5.1)"
        if not re.fullmatch(rb"[\t\x20-\x7e\x80-\xff]*", value):
            return f"control character in value {_show(value)} of {_show(name)} (RFC 9110 §5.5)"
    return "malformed header section"  # pragma: no cover - regexes agree


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of field ``name``, in order."""
    name = name.lower()
    return [v for n, v in headers if n == name]


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The value of field ``name``; several lines are combined with ", " (RFC 9110 §5.3).

    Not for Set-Cookie, whose lines cannot be combined (RFC 9110 §5.3): use :func:`get_all`.
    """
    values = get_all(headers, name)
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def set_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Replace every line of ``name`` by one line (at the first one's place, else appended)."""
    name = name.lower()
    out: list[tuple[bytes, bytes]] = []
    placed = False
    for field in headers:
        if field[0] == name:
            if not placed:
                out.append((name, value))
                placed = True
        else:
            out.append(field)
    if not placed:
        out.append((name, value))
    return tuple(out)


def add_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Append one field line."""
    return (*headers, (name.lower(), value))


def remove_headers(headers: Headers, names: Iterable[bytes]) -> Headers:
    """Drop every line whose name is in ``names`` (compared case-insensitively)."""
    drop = {n.lower() for n in names}
    return tuple([field for field in headers if field[0] not in drop])


def split_tokens(value: bytes) -> list[bytes]:
    """The lowercased members of a comma-separated list value; empty members are ignored
    (RFC 9110 §5.6.1)."""
    return [t for t in (p.strip(b" \t").lower() for p in value.split(b",")) if t]


def header_tokens(headers: Headers, name: bytes) -> list[bytes]:
    """The lowercased list members of every line of field ``name`` (e.g. Connection)."""
    name = name.lower()
    return [t for n, v in headers if n == name for t in split_tokens(v)]


# RFC 9110 §7.6.1: fields an intermediary removes or replaces before forwarding, whether or not
# they are named in Connection. Proxy-Connection: RFC 9112 Appendix C.2.2; Keep-Alive: RFC 2068
# §19.7.1. Proxy-Authenticate/-Authorization are meant for this proxy too, but RFC 9110 §11.7
# lets a proxy relay them, so they are not listed. HTTP2-Settings: RFC 7540 §3.2.1.
HOP_BY_HOP: Final = frozenset(
    [
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ]
)


def hop_by_hop(headers: Headers) -> frozenset[bytes]:
    """Names of the hop-by-hop fields of a message: the fixed list of RFC 9110 §7.6.1 plus every
    connection option named in its Connection field."""
    options = header_tokens(headers, b"connection")
    return HOP_BY_HOP.union(options) if options else HOP_BY_HOP


def strip_hop_by_hop(headers: Headers) -> Headers:
    """``headers`` without its hop-by-hop fields, as a proxy forwards them (RFC 9110 §7.6.1)."""
    drop = hop_by_hop(headers)
    return tuple([field for field in headers if field[0] not in drop])
