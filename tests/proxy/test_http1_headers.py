"""Header-section parsing and the editing helpers the proxy uses (RFC 9110 §5, §7.6.1)."""

from __future__ import annotations

import pytest

from auditmesh.proxy import headers as h
from auditmesh.proxy.http1_events import Headers, RemoteProtocolError

FIELDS: Headers = (
    (b"host", b"a"),
    (b"connection", b"keep-alive, X-Trace-Hop"),
    (b"x-trace-hop", b"1"),
    (b"accept", b"text/html"),
    (b"accept", b"application/json"),
    (b"keep-alive", b"timeout=5"),
    (b"te", b"trailers"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
    (b"proxy-connection", b"keep-alive"),
    (b"set-cookie", b"a=1"),
    (b"set-cookie", b"b=2"),
)


def test_get_and_get_all() -> None:
    assert h.get_header(FIELDS, b"Host") == b"a"
    assert h.get_header(FIELDS, b"accept") == b"text/html, application/json"  # RFC 9110 §5.3
    assert h.get_all(FIELDS, b"set-cookie") == [b"a=1", b"b=2"]
    assert h.get_header(FIELDS, b"missing") is None
    assert h.get_all(FIELDS, b"missing") == []


def test_set_add_remove_keep_order() -> None:
    fields: Headers = ((b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4"))
    assert h.set_header(fields, b"A", b"x") == ((b"a", b"x"), (b"b", b"2"), (b"c", b"4"))
    assert h.set_header(fields, b"d", b"5") == (*fields, (b"d", b"5"))
    assert h.add_header(fields, b"B", b"6") == (*fields, (b"b", b"6"))
    assert h.remove_headers(fields, [b"A", b"c"]) == ((b"b", b"2"),)
    assert h.remove_headers(fields, []) == fields


def test_tokens() -> None:
    assert h.split_tokens(b" Keep-Alive ,, close,\tUpgrade ") == [
        b"keep-alive",
        b"close",
        b"upgrade",
    ]
    assert h.split_tokens(b"") == []
    assert h.header_tokens(FIELDS, b"connection") == [b"keep-alive", b"x-trace-hop"]


def test_hop_by_hop_includes_connection_options() -> None:
    # RFC 9110 §7.6.1: the fixed list plus every option named in Connection.
    names = h.hop_by_hop(FIELDS)
    assert names == h.HOP_BY_HOP | {b"x-trace-hop"}
    assert h.strip_hop_by_hop(FIELDS) == (
        (b"host", b"a"),
        (b"accept", b"text/html"),
        (b"accept", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    )
    assert h.hop_by_hop(((b"host", b"a"),)) == h.HOP_BY_HOP


def test_connection_cannot_declare_end_to_end_fields_safe() -> None:
    # A peer listing "host" in Connection gets it stripped too: that is what the RFC says; the
    # proxy adds its own Host for the upstream.
    assert h.strip_hop_by_hop(((b"host", b"a"), (b"connection", b"host"))) == ()


def test_render_and_validate() -> None:
    rendered = h.render_headers(((b"a", b"1"), (b"b", b"")))
    assert rendered == b"a: 1\r\nb: \r\n"
    assert h.valid_field_section(rendered)
    assert not h.valid_field_section(b"A: 1\r\n")
    assert not h.valid_field_section(b"a: 1\r\nb: 2\r\nInjected: x\nc: 3\r\n")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (b"", ()),
        (b"A: 1\r\n", ((b"a", b"1"),)),
        (b"A:1\r\nB:  two  words \t\r\n", ((b"a", b"1"), (b"b", b"two  words"))),
        (b"X: \t \r\n", ((b"x", b""),)),
        (b"X: \xff\x80\r\n", ((b"x", b"\xff\x80"),)),
    ],
)
def test_parse_field_section(section: bytes, expected: Headers) -> None:
    assert h.parse_field_section(section, 10) == expected


@pytest.mark.parametrize(
    ("section", "words"),
    [
        (b"A: 1", "malformed"),  # no CRLF at all: a caller bug, still refused
        (b"A: 1\r\nB: 2", "malformed"),
        (b"A: 1\n", "bare CR or LF"),
        (b"A : 1\r\n", "whitespace between field name and colon"),
        (b" A: 1\r\n", "obsolete line folding"),
        (b"A\r\n", "without a colon"),
        (b"\xc3\xa9: 1\r\n", "invalid field name"),
        (b"A: 1\x01\r\n", "invalid character"),
    ],
)
def test_parse_field_section_refusals(section: bytes, words: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        h.parse_field_section(section, 10)
    assert info.value.status_hint == 400 and words in info.value.reason, info.value.reason


def test_parse_field_section_limit() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        h.parse_field_section(b"A: 1\r\n" * 3, 2)
    assert info.value.status_hint == 431
