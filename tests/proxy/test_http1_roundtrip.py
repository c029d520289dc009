"""Round trip: what one Connection send()s, a peer Connection receives as equal events.

Random keep-alive exchanges (requests with Content-Length or chunked bodies and trailers,
interim 1xx responses, final responses framed by length, chunked or auto-chunked, HEAD, 204,
304) over one client/server pair, every message cut into random pieces on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.proxy.http1 import Connection, Role, State
from auditmesh.proxy.http1_events import (
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    Response,
)

from .http1_util import drain, merge

RESERVED = {
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"host",
    b"upgrade",
    b"expect",
    b"te",
    b"keep-alive",
}
names = st.from_regex(rb"[a-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True).filter(
    lambda n: n not in RESERVED
)
# RFC 9110 §5.5 field-value without surrounding whitespace (OWS is not part of a value).
values = st.from_regex(
    rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]{0,24}[\x21-\x7e\x80-\xff])?)?",
    fullmatch=True,
)
fields = st.lists(st.tuples(names, values), max_size=6).map(tuple)
bodies = st.lists(st.binary(max_size=40), max_size=4)
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"X-CUSTOM"])
targets = st.from_regex(rb"/[\x21-\x7e\x80-\xff]{0,30}", fullmatch=True)
reasons = st.one_of(
    st.just(b""),
    st.from_regex(rb"[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]{0,16}", fullmatch=True),
)


PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(frozen=True)
class Exchange:
    method: bytes
    target: bytes
    request_fields: Headers
    request_body: list[bytes]
    request_chunked: bool
    request_trailers: Headers
    interim: list[tuple[int, Headers]]
    status: int
    reason: bytes
    response_fields: Headers
    response_body: list[bytes]
    response_framing: str  # "length", "chunked" or "auto"
    response_trailers: Headers


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    method = draw(methods)
    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 400, 404, 418, 500, 503, 599]))
    no_content = method == b"HEAD" or status in (204, 304)
    framing = draw(st.sampled_from(["length", "chunked", "auto"]))
    chunked_request = draw(st.booleans())
    return Exchange(
        method=method,
        target=draw(targets),
        request_fields=draw(fields),
        request_body=draw(bodies),
        request_chunked=chunked_request,
        request_trailers=draw(fields) if chunked_request else (),
        interim=draw(st.lists(st.tuples(st.sampled_from([100, 102, 103]), fields), max_size=2)),
        status=status,
        reason=draw(reasons),
        response_fields=draw(fields),
        response_body=[] if no_content else draw(bodies),
        response_framing="length" if no_content and status == 204 else framing,
        response_trailers=draw(fields) if framing != "length" and not no_content else (),
    )


def deliver(data: st.DataObject, wire: bytes, to: Connection) -> list[Event]:
    """Feed ``wire`` to ``to`` in random pieces; return the merged events."""
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=6))))
    events: list[Event] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        if cut > start:
            to.receive_data(wire[start:cut])
            events += drain(to)
            start = cut
    return merge(events)


def body_events(chunks: list[bytes], trailers: Headers) -> list[Event]:
    body = b"".join(chunks)
    return [*([Data(body)] if body else []), EndOfMessage(trailers)]


@settings(max_examples=80, deadline=None)
@given(st.lists(exchanges(), min_size=1, max_size=3), st.data())
def test_round_trip(cycles: list[Exchange], data: st.DataObject) -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    for x in cycles:
        # ---- request: client -> server
        body = b"".join(x.request_body)
        framing = (
            (b"transfer-encoding", b"chunked")
            if x.request_chunked
            else (b"content-length", b"%d" % len(body))
        )
        request = Request(x.method, x.target, ((b"host", b"svc"), *x.request_fields, framing))
        wire = client.send(request)
        wire += b"".join(client.send(Data(c)) for c in x.request_body)
        wire += client.send(EndOfMessage(x.request_trailers))
        assert deliver(data, wire, server) == [
            request,
            *body_events(x.request_body, x.request_trailers),
        ]

        # ---- response: server -> client
        wire = b""
        expected: list[Event] = []
        for status, interim_fields in x.interim:
            wire += server.send(InformationalResponse(status, interim_fields))
            expected.append(InformationalResponse(status, interim_fields))
        response_fields = x.response_fields
        if x.response_framing == "length":
            if x.status != 204:
                size = len(b"".join(x.response_body)) if x.method != b"HEAD" else 7
                response_fields = (*response_fields, (b"content-length", b"%d" % size))
        elif x.response_framing == "chunked":
            response_fields = (*response_fields, (b"transfer-encoding", b"chunked"))
        response = Response(x.status, response_fields, reason=x.reason)
        wire += server.send(response)
        wire += b"".join(server.send(Data(c)) for c in x.response_body)
        wire += server.send(EndOfMessage(x.response_trailers))
        sent_fields = response_fields
        no_content = x.method == b"HEAD" or x.status in (204, 304)
        if x.response_framing == "auto" and not no_content:
            sent_fields = (*sent_fields, (b"transfer-encoding", b"chunked"))
        reason = x.reason or PHRASES.get(x.status, b"")
        received = deliver(data, wire, client)
        expected += [
            Response(x.status, sent_fields, b"1.1", reason),
            *body_events(x.response_body, x.response_trailers),
        ]
        assert received == expected

        assert client.states == server.states == {Role.CLIENT: State.DONE, Role.SERVER: State.DONE}
        client.start_next_cycle()
        server.start_next_cycle()
