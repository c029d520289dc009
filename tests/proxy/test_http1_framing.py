"""Framing rules and refusals of the HTTP/1.1 parser, as tables (RFC 9112 §2-§7).

Every case is also delivered cut at every byte boundary and one byte at a time: the events
(Data merged) and the refusal status must not depend on how the bytes arrive.
"""

from __future__ import annotations

import pytest

from auditmesh.proxy.http1 import Connection, Role
from auditmesh.proxy.http1_events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Limits,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)

from .http1_util import client_after, drain, fetch, serve, splits

H = b"Host: a\r\n"
HOST = (b"host", b"a")
END = EndOfMessage()
CLOSED = ConnectionClosed()


def req(method: bytes, target: bytes, *headers: tuple[bytes, bytes], v: bytes = b"1.1") -> Request:
    return Request(method, target, headers, v)


# (id, raw request bytes, events the server sees before EOF)
ACCEPTED: list[tuple[str, bytes, list[Event]]] = [
    (
        "get-no-body",
        b"GET / HTTP/1.1\r\n" + H + b"\r\n",
        [req(b"GET", b"/", HOST), END],
    ),
    (
        "content-length",
        b"POST /x HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
        [req(b"POST", b"/x", HOST, (b"content-length", b"5")), Data(b"hello"), END],
    ),
    (
        "content-length-zero",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n",
        [req(b"POST", b"/", HOST, (b"content-length", b"0")), END],
    ),
    (
        "chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        [req(b"POST", b"/", HOST, (b"transfer-encoding", b"chunked")), Data(b"hello world"), END],
    ),
    (
        "chunked-hex-case-and-leading-zeros",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
        b"00A\r\n0123456789\r\n0000\r\n\r\n",
        [req(b"POST", b"/", HOST, (b"transfer-encoding", b"Chunked")), Data(b"0123456789"), END],
    ),
    (
        "chunked-extensions-ignored",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b'3 ; name=value;flag;q="a \\" b"\r\nabc\r\n0;last\r\n\r\n',
        [req(b"POST", b"/", HOST, (b"transfer-encoding", b"chunked")), Data(b"abc"), END],
    ),
    (
        "chunked-trailers",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nDigest: sha-256=xyz\r\nX-Count:  3 \r\n\r\n",
        [
            req(b"POST", b"/", HOST, (b"transfer-encoding", b"chunked")),
            Data(b"abc"),
            EndOfMessage(((b"digest", b"sha-256=xyz"), (b"x-count", b"3"))),
        ],
    ),
    (
        "duplicate-identical-content-length",  # RFC 9110 §8.6: collapsed to one before use
        b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
        [
            req(b"PUT", b"/", HOST, (b"content-length", b"2")),
            Data(b"ok"),
            END,
        ],
    ),
    (
        "leading-empty-lines-ignored",  # RFC 9112 §2.2
        b"\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
        [req(b"GET", b"/", HOST), END],
    ),
    (
        "ows-stripped-names-lowercased-order-kept",
        b"GET / HTTP/1.1\r\nX-B:\t b  \t\r\n" + H + b"x-a:a\r\nX-Empty:\r\nX-B: 2\r\n\r\n",
        [
            req(
                b"GET",
                b"/",
                (b"x-b", b"b"),
                HOST,
                (b"x-a", b"a"),
                (b"x-empty", b""),
                (b"x-b", b"2"),
            ),
            END,
        ],
    ),
    (
        "obs-text-and-inner-whitespace-in-value",
        b"GET / HTTP/1.1\r\n" + H + b"X-Name: caf\xc3\xa9 au  lait\r\n\r\n",
        [req(b"GET", b"/", HOST, (b"x-name", b"caf\xc3\xa9 au  lait")), END],
    ),
    (
        "http10-no-host",
        b"GET /old HTTP/1.0\r\n\r\n",
        [req(b"GET", b"/old", v=b"1.0"), END],
    ),
    (
        "http12-is-processed-as-11",  # RFC 9112 §2.6
        b"GET / HTTP/1.2\r\n" + H + b"\r\n",
        [req(b"GET", b"/", HOST, v=b"1.2"), END],
    ),
    (
        "absolute-form",
        b"GET http://a/p?q HTTP/1.1\r\n" + H + b"\r\n",
        [req(b"GET", b"http://a/p?q", HOST), END],
    ),
    (
        "asterisk-form-options",
        b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
        [req(b"OPTIONS", b"*", HOST), END],
    ),
    (
        "host-ipv6-and-port",
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        [req(b"GET", b"/", (b"host", b"[::1]:8080")), END],
    ),
    (
        "pipelined-with-bodies",
        b"POST /1 HTTP/1.1\r\n" + H + b"Content-Length: 1\r\n\r\nA"
        b"POST /2 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\nB\r\n0\r\n\r\n"
        b"GET /3 HTTP/1.1\r\n" + H + b"\r\n",
        [
            req(b"POST", b"/1", HOST, (b"content-length", b"1")),
            Data(b"A"),
            END,
            req(b"POST", b"/2", HOST, (b"transfer-encoding", b"chunked")),
            Data(b"B"),
            END,
            req(b"GET", b"/3", HOST),
            END,
        ],
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_request_framing(raw: bytes, expected: list[Event]) -> None:
    for chunks in splits(raw):
        assert serve(chunks) == ([*expected, CLOSED], None), chunks


SMALL = Limits(max_header_bytes=256, max_headers=4, max_request_line=64, max_chunk_line=32)

# (id, raw request bytes, limits, status hint, words the reason must contain)
REFUSED: list[tuple[str, bytes, Limits | None, int, str]] = [
    ("request-line-extra-part", b"GET / x HTTP/1.1\r\n" + H + b"\r\n", None, 400, "request line"),
    ("request-line-double-space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", None, 400, "request line"),
    ("request-line-no-version", b"GET /\r\n" + H + b"\r\n", None, 400, "request line"),
    ("method-not-token", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", None, 400, "method"),
    ("lowercase-http", b"GET / http/1.1\r\n" + H + b"\r\n", None, 400, "version"),
    ("http2-in-http1", b"GET / HTTP/2.0\r\n" + H + b"\r\n", None, 505, "HTTP version 2.0"),
    ("http09", b"GET / HTTP/0.9\r\n" + H + b"\r\n", None, 505, "HTTP version"),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", None, 400, "colon"),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", None, 400, "folding"),
    ("obs-fold-first-line", b"GET / HTTP/1.1\r\n " + H + b"\r\n", None, 400, "folding"),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", None, 400, "bare CR"),
    ("bare-lf-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\nY: b\r\n\r\n", None, 400, "LF"),
    ("bare-lf-message", b"GET / HTTP/1.1\nHost: a\n\n", None, 400, "bare LF"),
    ("bare-lf-in-request-line", b"GET / HTTP/1.1\nX: y\r\n\r\n", None, 400, "LF"),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", None, 400, "character"),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", None, 400, "character"),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H + b"X-Broken\r\n\r\n", None, 400, "colon"),
    ("bad-name", b"GET / HTTP/1.1\r\n" + H + b"X(y): b\r\n\r\n", None, 400, "field name"),
    ("empty-name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", None, 400, "field name"),
    (
        "smuggling-cl-and-te",  # RFC 9112 §6.3 rule 3, §11.2
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        None,
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "smuggling-te-and-cl",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        None,
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "duplicate-differing-content-length",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        None,
        400,
        "conflicting Content-Length",
    ),
    (
        "content-length-list-differs",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\nabcd",
        None,
        400,
        "conflicting Content-Length",
    ),
    *[
        (
            f"content-length-{name}",
            b"POST / HTTP/1.1\r\n" + H + b"Content-Length: " + value + b"\r\n\r\n",
            None,
            400,
            "Content-Length",
        )
        for name, value in [
            ("negative", b"-1"),
            ("plus", b"+1"),
            ("hex", b"0x1"),
            ("empty", b""),
            ("inner-space", b"1 2"),
            ("too-many-digits", b"1" * 19),
            ("huge", b"9" * 5000),
        ]
    ],
    (
        "te-gzip-then-chunked",  # RFC 9112 §6.1: a coding we do not know
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        None,
        501,
        "unsupported transfer coding",
    ),
    (
        "te-chunked-not-last",  # RFC 9112 §6.3 rule 4
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        None,
        400,
        "chunked",
    ),
    (
        "te-identity",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n",
        None,
        400,
        "chunked",
    ),
    (
        "te-chunked-twice",  # RFC 9112 §6.1: MUST NOT apply chunked more than once
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n",
        None,
        400,
        "chunked",
    ),
    (
        "te-with-parameter",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked;x=1\r\n\r\n",
        None,
        400,
        "chunked",
    ),
    (
        "te-in-http10",  # RFC 9112 §6.1
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        None,
        400,
        "HTTP/1.0",
    ),
    ("missing-host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", None, 400, "Host"),
    ("two-hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", None, 400, "Host"),
    ("invalid-host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", None, 400, "Host"),
    ("connect-origin-form", b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", None, 400, "authority"),
    ("asterisk-not-options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", None, 400, "OPTIONS"),
    ("target-not-a-form", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", None, 400, "request-target"),
    ("tls-on-plaintext-port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None, 400, "TLS"),
    ("binary-garbage", b"\x00\x01\x02", None, 400, "not an HTTP/1.1 request"),
    (
        "header-section-too-large",
        b"GET / HTTP/1.1\r\n" + H + b"X: " + b"v" * 300 + b"\r\n\r\n",
        SMALL,
        431,
        "header section larger than the limit of 256 bytes",
    ),
    (
        "header-section-too-large-default-16k",
        b"GET / HTTP/1.1\r\n" + H + b"X: " + b"v" * 16 * 1024 + b"\r\n\r\n",
        None,
        431,
        "larger than the limit of 16384 bytes",
    ),
    (
        "too-many-headers",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(4)) + b"\r\n",
        SMALL,
        431,
        "5 header fields",
    ),
    (
        "too-many-headers-default-100",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n",
        None,
        431,
        "101 header fields",
    ),
    (
        "request-line-too-long",
        b"GET /" + b"a" * 80 + b" HTTP/1.1\r\n" + H + b"\r\n",
        SMALL,
        414,
        "request line longer than 64",
    ),
    (
        "request-line-too-long-unterminated",
        b"GET /" + b"a" * 80,
        SMALL,
        414,
        "request line longer than 64",
    ),
    *[
        (
            f"bad-chunk-{name}",
            b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body,
            SMALL,
            400,
            why,
        )
        for name, body, why in [
            ("size-not-hex", b"xyz\r\nabc\r\n0\r\n\r\n", "chunk-size"),
            ("size-negative", b"-1\r\nabc\r\n0\r\n\r\n", "chunk-size"),
            ("size-0x", b"0x3\r\nabc\r\n0\r\n\r\n", "chunk-size"),
            ("size-trailing-space", b"3 \r\nabc\r\n0\r\n\r\n", "chunk-size"),
            ("size-empty", b"\r\nabc\r\n0\r\n\r\n", "chunk-size"),
            ("size-17-digits", b"1" + b"0" * 16 + b"\r\n", "chunk-size"),
            ("ext-bad-quote", b'3;a="x\r\nabc\r\n0\r\n\r\n', "chunk-size"),
            ("size-line-too-long", b"3;" + b"a" * 40 + b"\r\nabc\r\n0\r\n\r\n", "over 32"),
            ("size-bare-lf", b"3\nabc\r\n0\r\n\r\n", "chunk-size"),
            ("size-bare-lf-unterminated", b"3\nab", "bare LF"),
            ("data-longer-than-size", b"3\r\nabcd\r\n0\r\n\r\n", "CRLF"),
            ("data-shorter-than-size", b"3\r\nab\r\n0\r\n\r\n", "CRLF"),
            ("bad-trailer", b"0\r\nX : y\r\n\r\n", "colon"),
        ]
    ],
    (
        "too-many-trailers",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n0\r\n"
        + b"".join(b"T-%d: v\r\n" % i for i in range(5))
        + b"\r\n",
        SMALL,
        431,
        "5 header fields",
    ),
    (
        "trailer-section-too-large",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n0\r\nT: "
        + b"v" * 300
        + b"\r\n\r\n",
        SMALL,
        431,
        "trailer section larger than the limit of 256 bytes",
    ),
    (
        "eof-inside-body",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc",
        None,
        400,
        "closed inside a message body",
    ),
    (
        "eof-inside-chunked-body",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        None,
        400,
        "closed inside a message body",
    ),
    ("eof-inside-head", b"GET / HTTP/1.1\r\nHo", None, 400, "closed inside a header section"),
]


def _refusal(chunks: list[bytes], limits: Limits | None) -> RemoteProtocolError:
    conn = Connection(Role.SERVER, limits=limits)
    with pytest.raises(RemoteProtocolError) as info:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            drain(conn)
    return info.value


@pytest.mark.parametrize(
    ("raw", "limits", "status", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_request_refusal(raw: bytes, limits: Limits | None, status: int, words: str) -> None:
    exc = _refusal([raw], limits)
    assert (exc.status_hint, words) == (status, words) and words in exc.reason, exc.reason
    cuts = list(splits(raw)) if len(raw) < 600 else [[raw[:i], raw[i:]] for i in range(1, 600, 7)]
    for chunks in cuts:
        assert serve(chunks, limits=limits)[1] == status, chunks


def test_refused_peer_stays_refused() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(RemoteProtocolError, match="already sent something refused"):
        conn.next_event()


def test_refusal_names_the_line() -> None:
    exc = _refusal([b"GET / HTTP/1.1\r\n" + H + b"X-Evil: a\x00b\r\n\r\n"], None)
    assert "x-evil" in exc.reason.lower() and "RFC 9110 §5.5" in exc.reason


def test_header_limits_count_the_whole_head_exactly() -> None:
    head = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
    at = Limits(max_header_bytes=len(head))
    assert serve([head], limits=at)[1] is None
    assert serve([head], limits=Limits(max_header_bytes=len(head) - 1))[1] == 431
    line = len(b"GET / HTTP/1.1")
    assert serve([head], limits=Limits(max_request_line=line))[1] is None
    assert serve([head], limits=Limits(max_request_line=line - 1))[1] == 414
    four = b"GET / HTTP/1.1\r\n" + H + b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    assert serve([four], limits=Limits(max_headers=4))[1] is None
    assert serve([four], limits=Limits(max_headers=3))[1] == 431


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        Limits(max_headers=0)
    with pytest.raises(ValueError):
        Limits(max_chunk_line=4)


# ----------------------------------------------------------------------------- responses

R = b"HTTP/1.1 "

# (id, request method, raw response bytes, events the client sees including EOF's)
RESPONSES: list[tuple[str, bytes, bytes, list[Event]]] = [
    (
        "content-length",
        b"GET",
        R + b"200 OK\r\nContent-Length: 2\r\n\r\nhi",
        [Response(200, ((b"content-length", b"2"),), b"1.1", b"OK"), Data(b"hi"), END, CLOSED],
    ),
    (
        "chunked-with-trailers",
        b"GET",
        R + b"200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nT: 1\r\n\r\n",
        [
            Response(200, ((b"transfer-encoding", b"chunked"),), b"1.1", b"OK"),
            Data(b"hi"),
            EndOfMessage(((b"t", b"1"),)),
            CLOSED,
        ],
    ),
    (
        "close-delimited-http10",  # RFC 9112 §6.3 rule 8
        b"GET",
        b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil the end",
        [
            Response(200, ((b"server", b"old"),), b"1.0", b"OK"),
            Data(b"until the end"),
            END,
            CLOSED,
        ],
    ),
    (
        "close-delimited-http11",
        b"GET",
        R + b"200 OK\r\n\r\nabc",
        [Response(200, (), b"1.1", b"OK"), Data(b"abc"), END, CLOSED],
    ),
    (
        "close-delimited-empty",
        b"GET",
        R + b"200 OK\r\n\r\n",
        [Response(200, (), b"1.1", b"OK"), END, CLOSED],
    ),
    (
        "head-with-content-length",  # RFC 9112 §6.3 rule 1
        b"HEAD",
        R + b"200 OK\r\nContent-Length: 5\r\n\r\n",
        [Response(200, ((b"content-length", b"5"),), b"1.1", b"OK"), END, CLOSED],
    ),
    (
        "head-with-chunked",
        b"HEAD",
        R + b"200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        [Response(200, ((b"transfer-encoding", b"chunked"),), b"1.1", b"OK"), END, CLOSED],
    ),
    (
        "204-with-content-length",
        b"DELETE",
        R + b"204 No Content\r\nContent-Length: 5\r\n\r\n",
        [Response(204, ((b"content-length", b"5"),), b"1.1", b"No Content"), END, CLOSED],
    ),
    (
        "304-with-content-length",
        b"GET",
        R + b"304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        [Response(304, ((b"content-length", b"5"),), b"1.1", b"Not Modified"), END, CLOSED],
    ),
    (
        "1xx-before-final",  # RFC 9110 §15.2
        b"GET",
        R + b"100 Continue\r\n\r\n" + R + b"103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"" + R + b"200 OK\r\nContent-Length: 0\r\n\r\n",
        [
            InformationalResponse(100, ()),
            InformationalResponse(103, ((b"link", b"</a>"),)),
            Response(200, ((b"content-length", b"0"),), b"1.1", b"OK"),
            END,
            CLOSED,
        ],
    ),
    (
        "no-reason-no-space",
        b"GET",
        R + b"200\r\nContent-Length: 0\r\n\r\n",
        [Response(200, ((b"content-length", b"0"),), b"1.1", b""), END, CLOSED],
    ),
    (
        "reason-with-spaces",
        b"GET",
        R + b"404 Not  Found Here\r\nContent-Length: 0\r\n\r\n",
        [Response(404, ((b"content-length", b"0"),), b"1.1", b"Not  Found Here"), END, CLOSED],
    ),
]


@pytest.mark.parametrize(
    ("method", "raw", "expected"), [c[1:] for c in RESPONSES], ids=[c[0] for c in RESPONSES]
)
def test_response_framing(method: bytes, raw: bytes, expected: list[Event]) -> None:
    for chunks in splits(raw):
        assert fetch(chunks, method=method) == (expected, None), chunks


# (id, raw response bytes, words the reason must contain); always 502 for the proxy
BAD_RESPONSES: list[tuple[str, bytes, str]] = [
    ("not-http", b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP/1.x response"),
    ("http2-version", b"HTTP/2 200 OK\r\n\r\n", "status line"),
    ("version-2.0", b"HTTP/2.0 200 OK\r\n\r\n", "HTTP version 2.0"),
    ("status-two-digits", R + b"20 OK\r\n\r\n", "status line"),
    ("status-600", R + b"600 Nope\r\n\r\n", "out of range"),
    ("status-099", R + b"099 Nope\r\n\r\n", "out of range"),
    ("cl-and-te", R + b"200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    ("conflicting-cl", R + b"200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "confl"),
    ("te-in-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "1.0"),
    ("te-gzip", R + b"200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "chunked"),
    ("101-without-upgrade", R + b"101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "switch"),
    ("header-injection-cr", R + b"200 OK\r\nX: a\rSet-Cookie: b\r\n\r\n", "bare CR"),
    ("eof-before-response", b"", "SEND_RESPONSE"),
    ("eof-inside-body", R + b"200 OK\r\nContent-Length: 9\r\n\r\nabc", "message body"),
]


@pytest.mark.parametrize(
    ("raw", "words"), [c[1:] for c in BAD_RESPONSES], ids=[c[0] for c in BAD_RESPONSES]
)
def test_response_refusal(raw: bytes, words: str) -> None:
    conn = client_after(Request(b"GET", b"/", ((b"host", b"a"),)))
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(raw)
        drain(conn)
        conn.receive_data(b"")
        drain(conn)
    assert info.value.status_hint == 502 and words in info.value.reason, info.value.reason
    for chunks in splits(raw):
        assert fetch(chunks)[1] == 502


def test_response_before_any_request_is_read() -> None:
    # A server may answer before a request arrives (408): the client sees it and must close.
    conn = Connection(Role.CLIENT)
    conn.receive_data(R + b"408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    events = drain(conn)
    assert [type(e) for e in events] == [Response, EndOfMessage]
    assert not conn.keep_alive


def test_protocol_error_is_informative() -> None:
    exc = ProtocolError(431, "too big")
    assert (exc.status_hint, exc.reason, str(exc)) == (431, "too big", "too big (status 431)")
