"""Drivers for the sans-IO HTTP/1.1 tests: feed bytes, collect events, answer like a server."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from auditmesh.proxy.http1 import Connection, Role, State
from auditmesh.proxy.http1_events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    Limits,
    RemoteProtocolError,
    Request,
    Response,
)

HOST: Headers = ((b"host", b"example.test"),)
OK_EMPTY: Headers = ((b"content-length", b"0"),)

Outcome = tuple[list[Event], int | None]


def merge(events: Iterable[Event]) -> list[Event]:
    """Adjacent Data events joined: how a message is split across reads is not observable."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def drain(conn: Connection, into: list[Event] | None = None, *, limit: int = 10_000) -> list[Event]:
    """Events until NEED_DATA, PAUSED or ConnectionClosed (bounded: a hang is a failure).

    With ``into``, events are appended there as they come, so none is lost when a later
    next_event() raises."""
    events: list[Event] = [] if into is None else into
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return events
        assert not (isinstance(event, Data) and not event.data), "empty Data event"
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
    raise AssertionError("next_event() did not settle: possible hang")


def serve(chunks: Sequence[bytes], *, eof: bool = True, limits: Limits | None = None) -> Outcome:
    """Server side: feed ``chunks``, answer each complete request with an empty 200 (which
    also denies any Upgrade), reuse the connection while allowed. Returns the merged events and
    the refusal status, if any."""
    conn = Connection(Role.SERVER, limits=limits)
    events: list[Event] = []
    try:
        for chunk in [*chunks, b""] if eof else chunks:
            conn.receive_data(chunk)
            while True:
                drain(conn, events)
                if conn.our_state is State.SEND_RESPONSE and conn.their_state in _REQUEST_READ:
                    conn.send(Response(200, OK_EMPTY))
                    conn.send(EndOfMessage())
                if conn.states != _BOTH_DONE:
                    break
                conn.start_next_cycle()
    except RemoteProtocolError as exc:
        return merge(events), exc.status_hint
    return merge(events), None


_REQUEST_READ = (State.DONE, State.MUST_CLOSE, State.MIGHT_SWITCH_PROTOCOL)
_BOTH_DONE = {Role.CLIENT: State.DONE, Role.SERVER: State.DONE}


def client_after(
    request: Request, body: bytes = b"", *, limits: Limits | None = None
) -> Connection:
    """A client connection that has sent ``request`` (and its body) and awaits the response."""
    conn = Connection(Role.CLIENT, limits=limits)
    conn.send(request)
    if body:
        conn.send(Data(body))
    conn.send(EndOfMessage())
    return conn


def fetch(
    chunks: Sequence[bytes],
    *,
    method: bytes = b"GET",
    eof: bool = True,
    limits: Limits | None = None,
) -> Outcome:
    """Client side: send one ``method`` request, feed the response ``chunks``."""
    conn = client_after(Request(method, b"/", HOST), limits=limits)
    events: list[Event] = []
    try:
        for chunk in [*chunks, b""] if eof else chunks:
            conn.receive_data(chunk)
            drain(conn, events)
    except RemoteProtocolError as exc:
        return merge(events), exc.status_hint
    return merge(events), None


def splits(raw: bytes) -> Iterable[list[bytes]]:
    """``raw`` whole, cut at every byte boundary, and one byte at a time."""
    yield [raw]
    for i in range(1, len(raw)):
        yield [raw[:i], raw[i:]]
    yield [raw[i : i + 1] for i in range(len(raw))]
