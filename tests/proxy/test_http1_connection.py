"""Connection life cycle: keep-alive, pipelining, 1xx/HEAD/204/304, 100-continue, Upgrade,
CONNECT, EOF, and what send() writes and refuses (RFC 9110, RFC 9112)."""

from __future__ import annotations

import pytest

from auditmesh.proxy.http1 import EVENT_TRANSITIONS, STATE_TRANSITIONS, Connection, Role, State
from auditmesh.proxy.http1_events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)

from .http1_util import client_after, drain

C, S = Role.CLIENT, Role.SERVER
END = EndOfMessage()
CL0: Headers = ((b"content-length", b"0"),)
HOST: Headers = ((b"host", b"a"),)


def server_with(raw: bytes) -> tuple[Connection, list[Event]]:
    conn = Connection(S)
    conn.receive_data(raw)
    return conn, drain(conn)


def answer(conn: Connection, headers: Headers = CL0, body: bytes = b"", status: int = 200) -> bytes:
    out = conn.send(Response(status, headers))
    if body:
        out += conn.send(Data(body))
    return out + conn.send(END)


# ------------------------------------------------------------------------- the table


def test_table_covers_every_state_of_both_roles() -> None:
    for role in Role:
        for state in State:
            if (role, state) in {(C, State.SEND_RESPONSE), (S, State.MIGHT_SWITCH_PROTOCOL)}:
                continue  # states one role never has
            assert (role, state) in EVENT_TRANSITIONS
    for forced in STATE_TRANSITIONS.values():
        assert set(forced.values()) <= {State.MUST_CLOSE, State.SWITCHED_PROTOCOL}


def test_initial_state_and_roles() -> None:
    conn = Connection(C)
    assert (conn.our_role, conn.their_role) == (C, S)
    assert conn.states == {C: State.IDLE, S: State.IDLE}
    assert conn.next_event() is NEED_DATA
    assert conn.keep_alive and conn.request_method is None and conn.their_http_version is None


# ---------------------------------------------------------------------- keep-alive


@pytest.mark.parametrize(
    ("request_head", "keep", "connection_sent"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True, None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False, b"close"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False, b"close"),
        (b"GET / HTTP/1.0\r\n\r\n", False, b"close"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, b"keep-alive"),
        (b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n", False, b"close"),
    ],
    ids=["11-default", "11-close", "11-close-mixed-case", "10-default", "10-keep-alive", "10-both"],
)
def test_server_keep_alive_rules(
    request_head: bytes, keep: bool, connection_sent: bytes | None
) -> None:
    # RFC 9112 §9.3: close ends the connection; HTTP/1.0 persists only with keep-alive.
    conn, events = server_with(request_head)
    assert [type(e) for e in events] == [Request, EndOfMessage]
    wire = answer(conn, ((b"content-length", b"2"),), b"ok")
    sent = [line for line in wire.split(b"\r\n") if line.startswith(b"connection:")]
    assert sent == ([] if connection_sent is None else [b"connection: " + connection_sent])
    assert conn.keep_alive is keep
    if keep:
        conn.start_next_cycle()
        assert conn.states == {C: State.IDLE, S: State.IDLE}
    else:
        assert conn.states == {C: State.MUST_CLOSE, S: State.MUST_CLOSE}
        with pytest.raises(LocalProtocolError, match="not reusable"):
            conn.start_next_cycle()


@pytest.mark.parametrize(
    ("response", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\n\r\n", False),  # close-delimited
    ],
    ids=["11", "11-close", "10", "10-keep-alive", "11-close-delimited"],
)
def test_client_keep_alive_rules(response: bytes, keep: bool) -> None:
    conn = client_after(Request(b"GET", b"/", HOST))
    conn.receive_data(response)
    if not keep:
        conn.receive_data(b"")
    events = drain(conn)
    assert isinstance(events[0], Response) and events[1] == END
    assert conn.keep_alive is keep
    assert conn.our_state is (State.DONE if keep else State.MUST_CLOSE)


def test_client_sends_close_then_cannot_reuse() -> None:
    conn = client_after(Request(b"GET", b"/", (*HOST, (b"connection", b"close"))))
    assert not conn.keep_alive and conn.our_state is State.MUST_CLOSE
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert drain(conn)[-1] == END
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_keep_alive_cycles_many_times() -> None:
    conn = Connection(S)
    for i in range(50):
        target = b"/%d" % i
        conn.receive_data(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        events = drain(conn)
        assert events == [Request(b"GET", target, HOST), END]
        assert conn.request_method == b"GET"
        answer(conn)
        conn.start_next_cycle()
    assert conn.next_event() is NEED_DATA


# ---------------------------------------------------------------------- pipelining


def test_pipelined_requests_pause_until_the_cycle_is_done() -> None:
    one = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    two = b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    conn = Connection(S)
    conn.receive_data(one + two)
    assert conn.next_event() == Request(b"GET", b"/1", HOST)
    assert conn.next_event() == END
    for _ in range(3):  # stays paused however often it is asked
        assert conn.next_event() is PAUSED
    assert conn.trailing_data == (two, False)
    answer(conn)
    assert conn.next_event() is PAUSED  # until start_next_cycle()
    conn.start_next_cycle()
    assert drain(conn) == [
        Request(b"POST", b"/2", (*HOST, (b"content-length", b"3"))),
        Data(b"abc"),
        END,
    ]
    assert conn.next_event() is NEED_DATA


def test_pipelined_request_after_close_is_never_processed() -> None:
    # RFC 9112 §9.6: after "close" the server MUST NOT process further requests.
    conn, events = server_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [type(e) for e in events] == [Request, EndOfMessage]
    assert conn.next_event() is PAUSED
    answer(conn)
    assert conn.states == {C: State.MUST_CLOSE, S: State.MUST_CLOSE}
    assert conn.next_event() is PAUSED


def test_start_next_cycle_refused_mid_message() -> None:
    conn, _ = server_with(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(LocalProtocolError, match="both must be DONE"):
        conn.start_next_cycle()


def test_server_answering_early_still_reads_the_request_body() -> None:
    conn, events = server_with(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    answer(conn, status=413)  # e.g. refused before the body is read
    assert conn.states == {C: State.SEND_BODY, S: State.DONE}
    conn.receive_data(b"cd")
    assert drain(conn) == [Data(b"cd"), END]
    conn.start_next_cycle()


def test_unsolicited_response_then_request_is_not_processed() -> None:
    conn = Connection(S)
    wire = answer(conn, status=408)
    assert b"connection: close" in wire  # RFC 9110 §15.5.9: a 408 ends the connection
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.next_event() is PAUSED


# --------------------------------------------------------------- 1xx, HEAD, 204, 304


def test_head_response_keeps_framing_headers_and_sends_no_body() -> None:
    conn, _ = server_with(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    wire = conn.send(Response(200, ((b"content-length", b"1234"),)))
    assert wire == b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
    assert conn.send(Data(b"")) == b""
    with pytest.raises(LocalProtocolError, match="no content allowed"):
        conn.send(Data(b"x"))


def test_head_response_without_framing_gets_none_added() -> None:
    conn, _ = server_with(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.send(Response(200, ())) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert conn.send(END) == b""
    conn.start_next_cycle()


def test_head_then_get_on_one_client_connection() -> None:
    # The HEAD response's Content-Length must not swallow the next response (httptools would).
    conn = client_after(Request(b"HEAD", b"/", HOST))
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert [type(e) for e in drain(conn)] == [Response, EndOfMessage]
    conn.start_next_cycle()
    conn.send(Request(b"GET", b"/", HOST))
    conn.send(END)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert drain(conn)[1:] == [Data(b"hello"), END]


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_statuses(status: int) -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    wire = conn.send(Response(status, ((b"content-length", b"5"), (b"etag", b'"x"'))))
    if status == 204:  # RFC 9110 §8.6: MUST NOT send Content-Length in a 204
        assert b"content-length" not in wire
    else:  # a 304's Content-Length describes the selected representation
        assert b"content-length: 5" in wire
    with pytest.raises(LocalProtocolError):
        conn.send(Data(b"x"))


def test_informational_responses() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.send(InformationalResponse(103, ((b"link", b"</s.css>; rel=preload"),))) == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"
    )
    assert conn.our_state is State.SEND_RESPONSE
    with pytest.raises(LocalProtocolError):
        conn.send(InformationalResponse(200))


def test_no_1xx_to_an_http10_client() -> None:
    # RFC 9110 §15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client.
    conn, _ = server_with(b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert conn.send(InformationalResponse(100)) == b""
    assert conn.our_state is State.SEND_RESPONSE


def test_informational_response_before_a_request_is_refused() -> None:
    fresh = Connection(C)
    fresh.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="IDLE"):
        fresh.next_event()


# ------------------------------------------------------------------ 100-continue


EXPECT = b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"


def test_server_sees_the_expectation_and_answers_100() -> None:
    conn, events = server_with(EXPECT)
    assert [type(e) for e in events] == [Request]
    assert conn.they_are_waiting_for_100_continue
    assert conn.send(InformationalResponse(100)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not conn.they_are_waiting_for_100_continue
    conn.receive_data(b"data")
    assert drain(conn) == [Data(b"data"), END]


def test_expectation_ends_when_the_body_arrives_anyway() -> None:
    conn, _ = server_with(EXPECT + b"da")
    assert not conn.they_are_waiting_for_100_continue


def test_expectation_ends_with_a_final_response() -> None:
    conn, _ = server_with(EXPECT)
    answer(conn, status=417)
    assert not conn.they_are_waiting_for_100_continue


def test_expectation_ignored_in_http10() -> None:
    # RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be ignored.
    conn, _ = server_with(b"PUT / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
    assert not conn.they_are_waiting_for_100_continue


def test_client_waits_for_100_then_sends_the_body() -> None:
    conn = Connection(C)
    conn.send(
        Request(b"PUT", b"/u", (*HOST, (b"content-length", b"4"), (b"expect", b"100-continue")))
    )
    assert conn.client_is_waiting_for_100_continue
    assert not conn.they_are_waiting_for_100_continue  # that is the server's view
    conn.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert drain(conn) == [InformationalResponse(100, ())]
    assert not conn.client_is_waiting_for_100_continue
    assert conn.send(Data(b"data")) + conn.send(END) == b"data"
    conn.receive_data(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in drain(conn)] == [Response, EndOfMessage]
    conn.start_next_cycle()


def test_client_gets_a_final_response_instead_of_100() -> None:
    conn = Connection(C)
    conn.send(
        Request(b"PUT", b"/u", (*HOST, (b"content-length", b"4"), (b"expect", b"100-continue")))
    )
    conn.receive_data(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in drain(conn)] == [Response, EndOfMessage]
    assert not conn.client_is_waiting_for_100_continue
    assert conn.states == {C: State.SEND_BODY, S: State.DONE}  # the body is still owed (or close)


# ----------------------------------------------------------------- Upgrade, CONNECT


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


def test_server_upgrade_switches_with_trailing_data() -> None:
    conn, events = server_with(UPGRADE + FRAME)
    assert [type(e) for e in events] == [Request, EndOfMessage]
    assert conn.states == {C: State.MIGHT_SWITCH_PROTOCOL, S: State.SEND_RESPONSE}
    assert conn.next_event() is PAUSED
    wire = conn.send(
        InformationalResponse(101, ((b"connection", b"upgrade"), (b"upgrade", b"websocket")))
    )
    assert wire.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn.states == {C: State.SWITCHED_PROTOCOL, S: State.SWITCHED_PROTOCOL}
    assert conn.next_event() is PAUSED
    assert conn.trailing_data == (FRAME, False)
    conn.receive_data(b"more")
    conn.receive_data(b"")
    assert conn.trailing_data == (FRAME + b"more", True)
    with pytest.raises(LocalProtocolError):
        conn.send(Data(b"x"))


def test_server_denies_upgrade_and_continues_as_http() -> None:
    conn, _ = server_with(UPGRADE)
    answer(conn, status=426)
    assert conn.states == {C: State.DONE, S: State.DONE}
    conn.start_next_cycle()


def test_upgrade_needs_the_connection_option() -> None:
    # RFC 9110 §7.8: a sender of Upgrade MUST also send the "upgrade" connection option.
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert conn.states == {C: State.DONE, S: State.SEND_RESPONSE}
    with pytest.raises(LocalProtocolError, match="without a client proposal"):
        conn.send(InformationalResponse(101))


def test_upgrade_ignored_in_http10() -> None:
    conn, _ = server_with(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert conn.their_state is State.MUST_CLOSE


def test_client_upgrade_with_trailing_data() -> None:
    conn = client_after(
        Request(b"GET", b"/chat", (*HOST, (b"connection", b"upgrade"), (b"upgrade", b"websocket")))
    )
    assert conn.our_state is State.MIGHT_SWITCH_PROTOCOL
    conn.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        + FRAME
    )
    events = drain(conn)
    assert events == [
        InformationalResponse(101, ((b"connection", b"upgrade"), (b"upgrade", b"websocket")))
    ]
    assert conn.states == {C: State.SWITCHED_PROTOCOL, S: State.SWITCHED_PROTOCOL}
    assert conn.next_event() is PAUSED
    assert conn.trailing_data == (FRAME, False)


def test_client_upgrade_denied() -> None:
    conn = client_after(
        Request(b"GET", b"/", (*HOST, (b"connection", b"upgrade"), (b"upgrade", b"h2c")))
    )
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert drain(conn)[1:] == [Data(b"ok"), END]
    assert conn.states == {C: State.DONE, S: State.DONE}


def test_connect_tunnel_both_sides() -> None:
    server, events = server_with(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal\r\n\r\n")
    assert events[0] == Request(b"CONNECT", b"db.internal:5432", ((b"host", b"db.internal"),))
    assert server.next_event() is PAUSED
    # RFC 9110 §9.3.6: no Content-Length/Transfer-Encoding in a 2xx to CONNECT.
    wire = server.send(Response(200, ((b"content-length", b"0"),)))
    assert wire == b"HTTP/1.1 200 OK\r\n\r\n"
    assert server.states == {C: State.SWITCHED_PROTOCOL, S: State.SWITCHED_PROTOCOL}

    client = client_after(Request(b"CONNECT", b"db.internal:5432", HOST))
    client.receive_data(wire + b"\x00\x00\x00\x08raw")
    assert [type(e) for e in drain(client)] == [Response]
    assert client.states == {C: State.SWITCHED_PROTOCOL, S: State.SWITCHED_PROTOCOL}
    assert client.trailing_data == (b"\x00\x00\x00\x08raw", False)


def test_connect_refused_is_a_normal_response() -> None:
    client = client_after(Request(b"CONNECT", b"db:5432", HOST))
    client.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied")
    assert drain(client)[1:] == [Data(b"denied"), END]
    assert client.states == {C: State.DONE, S: State.DONE}


# ------------------------------------------------------------------------------ EOF


def test_eof_when_idle() -> None:
    conn = Connection(S)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()  # asking again is harmless
    assert conn.states == {C: State.CLOSED, S: State.MUST_CLOSE}
    with pytest.raises(LocalProtocolError, match="after EOF"):
        conn.receive_data(b"x")


def test_eof_after_a_cycle_closes_both() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    answer(conn)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.states == {C: State.CLOSED, S: State.MUST_CLOSE}
    assert conn.send(ConnectionClosed()) == b""
    assert conn.our_state is State.CLOSED


def test_client_disconnect_while_waiting_for_the_response() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.states == {C: State.CLOSED, S: State.SEND_RESPONSE}


def test_idle_pooled_connection_closed_by_upstream() -> None:
    conn = Connection(C)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.states == {C: State.MUST_CLOSE, S: State.CLOSED}
    with pytest.raises(LocalProtocolError):
        conn.send(Request(b"GET", b"/", HOST))


# ----------------------------------------------------------------------------- send


def test_response_without_framing_is_chunked_for_http11() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = conn.send(Response(200, ((b"content-type", b"text/plain"),)))
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    body = conn.send(Data(b"hello")) + conn.send(Data(b"")) + conn.send(Data(b"x" * 17))
    assert body == b"5\r\nhello\r\n11\r\n" + b"x" * 17 + b"\r\n"
    assert conn.send(EndOfMessage(((b"x-digest", b"abc"),))) == b"0\r\nx-digest: abc\r\n\r\n"
    conn.start_next_cycle()


def test_response_without_framing_is_close_delimited_for_http10() -> None:
    conn, _ = server_with(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = conn.send(Response(200, ((b"transfer-encoding", b"chunked"),)))
    # RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 client; the close ends the body.
    assert head == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert conn.send(Data(b"raw")) == b"raw"
    with pytest.raises(LocalProtocolError, match="trailers"):
        conn.send(EndOfMessage(((b"t", b"1"),)))


def test_content_length_is_enforced_when_sending() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.send(Response(200, ((b"content-length", b"3"),)))
    assert conn.send(Data(b"ab")) == b"ab"
    with pytest.raises(LocalProtocolError, match="beyond the declared Content-Length"):
        conn.send(Data(b"cd"))
    assert conn.our_state is State.ERROR
    with pytest.raises(LocalProtocolError, match="after a protocol error"):
        conn.send(END)


def test_content_length_short_at_end_of_message() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.send(Response(200, ((b"content-length", b"3"),)))
    with pytest.raises(LocalProtocolError, match="3 bytes short"):
        conn.send(END)


def test_request_body_needs_framing() -> None:
    conn = Connection(C)
    conn.send(Request(b"POST", b"/", HOST))
    with pytest.raises(LocalProtocolError, match="without Content-Length or Transfer-Encoding"):
        conn.send(Data(b"x"))


def test_proxy_reframes_a_streamed_body_as_chunked() -> None:
    # Downstream sent Content-Length; the proxy streams it upstream as chunked.
    down, events = server_with(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    down.receive_data(b"def")
    events += drain(down)
    up = Connection(C)
    request = events[0]
    assert isinstance(request, Request)
    wire = up.send(
        Request(request.method, request.target, (*HOST, (b"transfer-encoding", b"chunked")))
    )
    for event in events[1:]:
        wire += up.send(event)
    assert wire.endswith(b"\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    peer = Connection(S)
    peer.receive_data(wire)
    assert [e for e in drain(peer) if isinstance(e, Data)] == [Data(b"abc"), Data(b"def")]


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (((b"host", b"a"), (b"x", b"a\r\nInjected: 1")), "control character"),
        (((b"host", b"a"), (b"x", b"a\nb")), "control character"),
        (((b"host", b"a"), (b"x", b"a\x00")), "control character"),
        (((b"host", b"a"), (b"X-Upper", b"v")), "not lowercased"),
        (((b"host", b"a"), (b"bad name", b"v")), "field name"),
        (((b"host", b"a"), (b"", b"v")), "field name"),
        (((b"host", b"a"), (b"x:y", b"v")), "field name"),
        ((), "one Host"),
        (((b"host", b"a"), (b"host", b"b")), "one Host"),
        (((b"host", b"a"), (b"transfer-encoding", b"gzip")), "chunked"),
        (((b"host", b"a"), (b"transfer-encoding", b"gzip, chunked")), "transfer coding"),
        (
            ((b"host", b"a"), (b"content-length", b"1"), (b"transfer-encoding", b"chunked")),
            "both",
        ),
        (((b"host", b"a"), (b"content-length", b"x")), "Content-Length"),
    ],
)
def test_send_refuses_unsafe_request_heads(headers: Headers, words: str) -> None:
    conn = Connection(C)
    with pytest.raises(LocalProtocolError) as info:
        conn.send(Request(b"GET", b"/", headers))
    assert words in info.value.reason and info.value.status_hint == 500
    assert conn.our_state is State.ERROR


@pytest.mark.parametrize(
    ("method", "target"), [(b"G T", b"/"), (b"GET", b"/a b"), (b"GET", b""), (b"GET", b"/\r\n")]
)
def test_send_refuses_bad_request_lines(method: bytes, target: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="invalid request line"):
        Connection(C).send(Request(method, target, HOST))


def test_send_refuses_bad_responses() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="reason phrase"):
        conn.send(Response(200, CL0, reason=b"OK\r\nX: y"))
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="Response"):
        conn.send(Response(100, CL0))
    with pytest.raises(LocalProtocolError, match="a server does not send requests"):
        Connection(S).send(Request(b"GET", b"/", HOST))
    with pytest.raises(LocalProtocolError, match="InformationalResponse"):
        Connection(C).send(InformationalResponse(100))


def test_send_wrong_state() -> None:
    conn = Connection(C)
    with pytest.raises(LocalProtocolError, match="cannot Data in state IDLE"):
        conn.send(Data(b"x"))


def test_response_reason_and_unknown_status() -> None:
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.send(Response(299, CL0)) == b"HTTP/1.1 299 \r\ncontent-length: 0\r\n\r\n"
    conn, _ = server_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    wire = conn.send(Response(200, CL0, http_version=b"1.0", reason=b"Fine"))
    assert wire.startswith(b"HTTP/1.1 200 Fine\r\n")  # we always speak HTTP/1.1


def test_error_response_after_a_refused_request() -> None:
    conn = Connection(S)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    wire = answer(
        conn, ((b"content-length", b"11"),), b"bad request", status=info.value.status_hint
    )
    assert wire.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in wire
    assert conn.our_state is State.MUST_CLOSE


def test_bytes_like_input_is_copied() -> None:
    conn = Connection(S)
    data = bytearray(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
    conn.receive_data(data)
    data[:] = b"x" * len(data)
    assert drain(conn)[1] == Data(b"ok")
