"""Fuzzing the HTTP/1.1 parser with hypothesis.

Whatever the bytes and however they are cut: events or a RemoteProtocolError, never another
exception and never a hang (every driver loop is bounded); the outcome does not depend on the
cuts; and whatever is accepted can be forwarded unchanged by send() (a proxy never accepts a
head it could not re-serialise).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditmesh.proxy.http1 import Connection, Role
from auditmesh.proxy.http1_events import (
    Data,
    EndOfMessage,
    Event,
    Limits,
    Request,
    Response,
)

from .http1_util import Outcome, fetch, serve

SMALL = Limits(max_header_bytes=512, max_headers=8, max_request_line=128, max_chunk_line=40)

# Pieces of HTTP/1.1 that reach deep into the parser when glued together at random.
PIECES = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"CONNECT ",
    b"/ ",
    b"/p?q ",
    b"http://a/ ",
    b"a:443 ",
    b"* ",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/1.1 ",
    b"HTTP/2.0",
    b"200 OK",
    b"100 Continue",
    b"101 Switching",
    b"204 ",
    b"304 ",
    b"\r\n",
    b"\r\n\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b'"',
    b"\x00",
    b"\x7f",
    b"\xff",
    b"Host: a",
    b"Host:",
    b"Content-Length: ",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"X-A: b",
    b"0",
    b"3",
    b"5",
    b"a",
    b"ffffffffffffffffff",
    b"abc",
    b"0\r\n\r\n",
    b"3\r\nabc\r\n",
]
glued = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
garbage = st.one_of(st.binary(max_size=200), glued)
head_and_chunks = glued.map(
    lambda tail: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + tail
)


@st.composite
def cut(draw: st.DrawFn, raw: bytes) -> list[bytes]:
    points = sorted(set(draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=8))))
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    return [p for p in pieces if p]


def check_forwardable(events: list[Event], role: Role) -> None:
    """Every accepted head can be sent on by a fresh Connection without a refusal."""
    for event in events:
        if role is Role.SERVER and isinstance(event, Request):
            hosts = [v for n, v in event.headers if n == b"host"]
            if len(hosts) == 1 and event.method != b"CONNECT":
                Connection(Role.CLIENT).send(Request(event.method, event.target, event.headers))
        if role is Role.CLIENT and isinstance(event, Response):
            downstream = Connection(Role.SERVER)
            downstream.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            downstream.next_event()
            downstream.send(Response(event.status, event.headers, reason=event.reason))


def same_outcome(whole: Outcome, pieces: Outcome) -> None:
    assert whole == pieces
    for event in whole[0]:
        assert not (isinstance(event, Data) and not event.data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(garbage, head_and_chunks), st.sampled_from([None, SMALL]), st.data())
def test_server_never_crashes_and_ignores_cuts(
    raw: bytes, limits: Limits | None, data: st.DataObject
) -> None:
    whole = serve([raw] if raw else [], limits=limits)
    check_forwardable(whole[0], Role.SERVER)
    same_outcome(whole, serve(data.draw(cut(raw)), limits=limits))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage, st.sampled_from([b"GET", b"HEAD", b"CONNECT"]), st.data())
def test_client_never_crashes_and_ignores_cuts(
    raw: bytes, method: bytes, data: st.DataObject
) -> None:
    whole = fetch([raw] if raw else [], method=method, limits=SMALL)
    check_forwardable(whole[0], Role.CLIENT)
    same_outcome(whole, fetch(data.draw(cut(raw)), method=method, limits=SMALL))


VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n\x81\x00",
    b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
]
INTERESTING = [b"\r", b"\n", b"\r\n", b":", b" ", b"\x00", b"0", b"9", b"f", b";", b","]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            raw[at:at] = draw(st.sampled_from(INTERESTING))
        elif action == "delete":
            del raw[at : at + draw(st.integers(1, 4))]
        elif at < len(raw):
            raw[at] = draw(st.integers(0, 255))
    return bytes(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.data())
def test_mutated_requests(raw: bytes, data: st.DataObject) -> None:
    whole = serve([raw] if raw else [])
    check_forwardable(whole[0], Role.SERVER)
    same_outcome(whole, serve(data.draw(cut(raw))))


def test_regression_lone_cr_before_request_line() -> None:
    # Found by the every-split table test: b"\r" alone (the first half of an empty line the
    # server must ignore, RFC 9112 §2.2) was refused as "not an HTTP/1.1 request".
    raw = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert serve([raw[:1], raw[1:]]) == serve([raw])
    assert serve([raw])[1] is None and isinstance(serve([raw])[0][-2], EndOfMessage)
