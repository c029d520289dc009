"""Sans-IO HTTP/1.1: one connection's state machine, parser and serialiser (RFC 9110, RFC 9112).

Place in the house: the data plane. The sidecar's listener owns the sockets, TLS and timeouts
and runs a thin loop around :class:`Connection` — bytes in with :meth:`Connection.receive_data`,
events out of :meth:`Connection.next_event`, events in to :meth:`Connection.send`, bytes out —
once per downstream connection (``Role.SERVER``) and once per pooled upstream connection
(``Role.CLIENT``). This module never touches a socket or an event loop; it imports only its
vocabulary (:mod:`auditmesh.proxy.http1_events`) and header grammar (:mod:`.headers`).

The shape is h11's: every transition of both parties lives in one table
(:data:`EVENT_TRANSITIONS`, :data:`STATE_TRANSITIONS`) below; readers and writers are chosen
from the states. Each party has its own state (the peer's SEND_BODY is what we read as its
body): IDLE → SEND_BODY → DONE for the client, IDLE → SEND_RESPONSE → SEND_BODY → DONE for the
server, then ``start_next_cycle()`` back to IDLE; MUST_CLOSE when the connection cannot be
reused, CLOSED after EOF, MIGHT_SWITCH_PROTOCOL/SWITCHED_PROTOCOL around Upgrade and CONNECT,
ERROR after a refusal.

Parser: our own, not httptools. httptools (llhttp) is a fast C parser and was the first choice,
but as wrapped it cannot express things this core must get right:

* no way to tell it that a response answers HEAD (llhttp's "skip body" return value of
  ``on_headers_complete`` is not reachable from Python), so a HEAD response with
  Content-Length swallows the next response as its body;
* no pause and no byte offsets: pipelined requests in one buffer are all parsed at once, and
  after an error we cannot know where a message ended (needed for ``trailing_data``);
* no EOF entry point (``llhttp_finish``) for close-delimited responses;
* no size limits at all (a header line is accumulated in Python ``bytes +=`` until complete),
  and errors are free-text strings, so 414/431/501/505 cannot be told apart reliably;
* it accepts ``HTTP/2.0`` in a request line.

So the parser here is written for this core, with no per-byte Python loops: a header section
is located with ``bytes.find`` (resuming where the last search stopped), its lines are
extracted by one anchored C regex ``findall`` and the section is valid exactly when every line
matched (the match count equals the CRLF count); bodies are handed out as slices of the
received bytes (zero-copy when a ``receive_data`` chunk is all body). It is strict where
leniency enables request smuggling or response splitting: CRLF only (RFC 9112 §2.2), no
obs-fold (§5.2), no whitespace before the colon (§5.1), no Content-Length with
Transfer-Encoding (§6.3), ``chunked`` as the only transfer coding, no Transfer-Encoding in
HTTP/1.0 (§6.1). Measured (``python -m tests.proxy.bench_http1``): about 3.4x h11's request
rate for a parse + serialise cycle as Python, twice that again compiled by mypyc (setup.py):
80k server and 100k client cycles a second against 40k and 50k; a bare httptools parse is
still ~5x faster than our compiled full cycle.

What the I/O layer must do (this module cannot): time out (header read, idle, body, waiting
for 100 Continue — RFC 9110 §10.1.1 says a client must not wait indefinitely); stop reading on
``PAUSED``; close the socket when our state is MUST_CLOSE/CLOSED or after any ProtocolError;
strip hop-by-hop fields before forwarding (:func:`auditmesh.proxy.headers.strip_hop_by_hop`)
and then declare the onward framing itself — a request body forwarded without
``content-length`` or ``transfer-encoding: chunked`` is refused by :meth:`Connection.send`
(a response without either is chunked, or close-delimited for an HTTP/1.0 client,
automatically); retry an idempotent request on a fresh upstream connection when a pooled one
fails before any response byte (the peer may have closed it while idle); after
SWITCHED_PROTOCOL, write ``trailing_data`` to the other side first and then relay raw bytes.
"""

from __future__ import annotations

import enum
import re
from http import HTTPStatus
from typing import Final, Literal

from auditmesh.proxy.headers import (
    TCHAR,
    explain_sent_section,
    parse_field_section,
    remove_headers,
    render_headers,
    set_header,
    split_tokens,
    valid_field_section,
)
from auditmesh.proxy.http1_events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Limits,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    Sentinel,
)

__all__ = [
    "EVENT_TRANSITIONS",
    "STATE_TRANSITIONS",
    "Connection",
    "Role",
    "State",
]


class Role(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code

    CLIENT = "CLIENT"  #: we send requests (the sidecar's upstream side)
    SERVER = "SERVER"  #: we receive requests (the sidecar's downstream side)


class State(enum.Enum):
    """The state of one party. The peer's SEND_BODY is our "receive body"."""

    __hash__ = object.__hash__

    IDLE = "IDLE"
    SEND_RESPONSE = "SEND_RESPONSE"  # server only: request head seen, no final response yet
    SEND_BODY = "SEND_BODY"
    DONE = "DONE"
    MUST_CLOSE = "MUST_CLOSE"
    CLOSED = "CLOSED"
    MIGHT_SWITCH_PROTOCOL = "MIGHT_SWITCH_PROTOCOL"  # client only: Upgrade/CONNECT sent, waiting
    SWITCHED_PROTOCOL = "SWITCHED_PROTOCOL"
    ERROR = "ERROR"


class _Switch(enum.Enum):
    __hash__ = object.__hash__

    UPGRADE = "UPGRADE"  # RFC 9110 §7.8: Upgrade + 101 Switching Protocols
    CONNECT = "CONNECT"  # RFC 9110 §9.3.6: CONNECT + 2xx


_I: Final = State.IDLE
_SR: Final = State.SEND_RESPONSE
_SB: Final = State.SEND_BODY
_DN: Final = State.DONE
_MC: Final = State.MUST_CLOSE
_CL: Final = State.CLOSED
_MS: Final = State.MIGHT_SWITCH_PROTOCOL
_SW: Final = State.SWITCHED_PROTOCOL
_ER: Final = State.ERROR
_C: Final = Role.CLIENT
_S: Final = Role.SERVER

_Trigger = type | tuple[type, Role | _Switch]

# The whole protocol, as in h11. Event-triggered: (party, its state) -> {event type: new state}.
# A server sees the client's Request as the trigger (Request, CLIENT). A 101 answering an Upgrade
# and a 2xx answering CONNECT are the switch triggers. Anything not listed is a protocol error.
EVENT_TRANSITIONS: Final[dict[tuple[Role, State], dict[_Trigger, State]]] = {
    (_C, _I): {Request: _SB, ConnectionClosed: _CL},
    (_C, _SB): {Data: _SB, EndOfMessage: _DN},
    (_C, _DN): {ConnectionClosed: _CL},
    (_C, _MC): {ConnectionClosed: _CL},
    (_C, _CL): {ConnectionClosed: _CL},
    (_C, _MS): {},
    (_C, _SW): {},
    (_C, _ER): {},
    # A server may answer before any request (e.g. 408, or 400 after a parse error).
    (_S, _I): {(Request, _C): _SR, Response: _SB, ConnectionClosed: _CL},
    (_S, _SR): {
        InformationalResponse: _SR,
        Response: _SB,
        (InformationalResponse, _Switch.UPGRADE): _SW,
        (Response, _Switch.CONNECT): _SW,
    },
    (_S, _SB): {Data: _SB, EndOfMessage: _DN},
    (_S, _DN): {ConnectionClosed: _CL},
    (_S, _MC): {ConnectionClosed: _CL},
    (_S, _CL): {ConnectionClosed: _CL},
    (_S, _SW): {},
    (_S, _ER): {},
}

# State-triggered: (client state, server state) -> forced states. Applied until stable, after:
#  - client DONE with a switch proposal pending -> MIGHT_SWITCH_PROTOCOL (and back to DONE when
#    the server's final response denies it);
#  - no keep-alive (RFC 9112 §9.3, §9.6: "close", HTTP/1.0, close-delimited body, any error):
#    DONE -> MUST_CLOSE.
STATE_TRANSITIONS: Final[dict[tuple[State, State], dict[Role, State]]] = {
    (_MS, _SW): {_C: _SW},  # the server accepted the switch
    (_CL, _DN): {_S: _MC},  # the client hung up: nothing more to answer
    (_CL, _I): {_S: _MC},
    (_ER, _DN): {_S: _MC},
    (_DN, _CL): {_C: _MC},  # the server hung up: no further requests
    (_I, _CL): {_C: _MC},
    (_DN, _ER): {_C: _MC},
}


class _StateMachine:
    """Both parties' states plus what the table consults: keep-alive and switch proposals."""

    __slots__ = ("client", "server", "keep_alive", "proposals")

    def __init__(self) -> None:
        self.client = _I
        self.server = _I
        self.keep_alive = True
        self.proposals: set[_Switch] = set()

    def fire(self, role: Role, event_type: type, switch: _Switch | None = None) -> None:
        trigger: _Trigger = event_type
        if switch is not None:
            if switch not in self.proposals:
                raise LocalProtocolError(500, f"{switch.value} switch without a client proposal")
            trigger = (event_type, switch)
        elif event_type is Response and self.proposals:
            self.proposals.clear()  # a final response that is not the switch denies it
        state = self.client if role is _C else self.server
        new = EVENT_TRANSITIONS[role, state].get(trigger)
        if new is None:
            raise LocalProtocolError(
                500, f"{role.value} cannot {event_type.__name__} in state {state.value}"
            )
        if role is _C:
            self.client = new
            if event_type is Request:
                self._server_sees_request()
        else:
            self.server = new
        if new is not state:
            self.settle()

    def _server_sees_request(self) -> None:
        new = EVENT_TRANSITIONS[_S, self.server].get((Request, _C))
        if new is None:
            raise LocalProtocolError(500, f"request while the server is {self.server.value}")
        self.server = new

    def error(self, role: Role) -> None:
        if role is _C:
            self.client = _ER
        else:
            self.server = _ER
        self.keep_alive = False
        self.settle()

    def no_keep_alive(self) -> None:
        self.keep_alive = False
        self.settle()

    def settle(self) -> None:
        client, server = self.client, self.server
        while True:
            c, s = client, server
            if self.proposals:
                if c is _DN:
                    c = _MS
            elif c is _MS:
                c = _DN
            if not self.keep_alive:
                if c is _DN:
                    c = _MC
                if s is _DN:
                    s = _MC
            forced = STATE_TRANSITIONS.get((c, s))
            if forced is not None:
                c = forced.get(_C, c)
                s = forced.get(_S, s)
            if c is client and s is server:
                break
            client, server = c, s
        self.client, self.server = client, server

    def start_next_cycle(self) -> None:
        if self.client is not _DN or self.server is not _DN:
            raise LocalProtocolError(
                500,
                f"connection not reusable: client {self.client.value}, "
                f"server {self.server.value} (both must be DONE)",
            )
        self.client = self.server = _I


# Body framing modes, for both directions.
_LENGTH: Final = 0  # Content-Length (0 when the message has no content by rule)
_CHUNKED: Final = 1  # RFC 9112 §7.1
_UNTIL_CLOSE: Final = 2  # RFC 9112 §6.3 rule 8: response delimited by connection close
_NO_CONTENT: Final = 3  # sending only: HEAD response, 204, 304, successful CONNECT

# Chunked-reader phases.
_CH_SIZE: Final = 0
_CH_DATA: Final = 1
_CH_CRLF: Final = 2
_CH_TRAILER: Final = 3

_END: Final = EndOfMessage()
_LEADING_CRLF: Final = re.compile(rb"(?:\r\n)+")
_TOKEN_BYTES: Final = frozenset(re.findall(rb"[" + TCHAR + rb"]", bytes(range(256))))
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version; HTTP-version §2.3.
_REQUEST_LINE: Final = re.compile(
    rb"([" + TCHAR + rb"]+) ([\x21-\x7e\x80-\xff]+) HTTP/([0-9])\.([0-9])"
)
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]; the SP before an
# empty reason is often missing in the wild and accepted (the reason carries no meaning).
_STATUS_LINE: Final = re.compile(
    rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?"
)
_METHOD: Final = re.compile(rb"[" + TCHAR + rb"]+")
_TARGET: Final = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_REASON: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# RFC 9112 §3.2.2 absolute-form starts with a scheme; §3.2.3 authority-form is host:port.
_ABSOLUTE_FORM: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:")
_AUTHORITY_FORM: Final = re.compile(
    rb"(?:\[[0-9A-Za-z:.%_~\-]+\]|[A-Za-z0-9._~!$&'()*+,;=%\-]+):[0-9]+"
)
# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ] (empty when no authority).
_HOST: Final = re.compile(rb"(?:\[[0-9A-Za-z:.%_~\-]+\]|[A-Za-z0-9._~!$&'()*+,;=%\-]*)(?::[0-9]*)?")
# RFC 9112 §7.1: chunk-size [ chunk-ext ]; §7.1.1 chunk-ext = *( BWS ";" BWS name [BWS "=" BWS
# (token / quoted-string)] ). At most 16 hex digits: a size must fit in 64 bits.
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*["
    + TCHAR
    + rb"]+(?:[ \t]*=[ \t]*(?:["
    + TCHAR
    + rb"]+|"
    + _QUOTED
    + rb"))?)*"
)
_FRAMING: Final = frozenset(
    [b"content-length", b"transfer-encoding", b"connection", b"host", b"upgrade", b"expect"]
)
_PHRASES: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _show(raw: bytes, limit: int = 60) -> str:
    return repr(raw[:limit]) + ("…" if len(raw) > limit else "")


class _Fields:
    """What framing and connection management need from a header section (one pass)."""

    __slots__ = (
        "content_length",
        "chunked",
        "connection",
        "hosts",
        "upgrade",
        "expect_100",
        "collapsed",
    )

    def __init__(self, headers: Headers, *, remote: bool) -> None:
        cl: list[bytes] | None = None
        te: list[bytes] | None = None
        self.connection: list[bytes] = []
        self.hosts: list[bytes] = []
        self.upgrade = False
        self.expect_100 = False
        for name, value in [f for f in headers if f[0] in _FRAMING]:
            if name == b"content-length":
                cl = [value] if cl is None else [*cl, value]
            elif name == b"transfer-encoding":
                te = split_tokens(value) if te is None else te + split_tokens(value)
            elif name == b"connection":
                self.connection += split_tokens(value)
            elif name == b"host":
                self.hosts.append(value)
            elif name == b"upgrade":
                self.upgrade = True
            elif b"100-continue" in split_tokens(value):  # expect, RFC 9110 §10.1.1
                self.expect_100 = True
        err: type[ProtocolError] = RemoteProtocolError if remote else LocalProtocolError
        status = 400 if remote else 500
        if te is not None and cl is not None:
            # RFC 9112 §6.3 rule 3: "ought to be handled as an error" (request smuggling, §11.2).
            raise err(status, "both Content-Length and Transfer-Encoding (RFC 9112 §6.3)")
        self.chunked = False
        if te is not None:
            # RFC 9112 §6.1: we only know "chunked", applied exactly once and last.
            if te != [b"chunked"]:
                if te and te[-1] == b"chunked" and b"chunked" not in te[:-1]:
                    raise err(501 if remote else 500, f"unsupported transfer coding in {te}")
                raise err(status, f"Transfer-Encoding {te} does not end in one chunked (§6.3)")
            self.chunked = True
        self.content_length: int | None = None
        # True when several identical values were collapsed: the section must then carry them
        # as one field before it is framed or forwarded (RFC 9110 §8.6).
        self.collapsed = False
        if cl is not None:
            # RFC 9110 §8.6 / RFC 9112 §6.3 rule 5: 1*DIGIT; identical duplicates (as lines or a
            # list) may be collapsed, differing ones are an error.
            if len(cl) == 1 and cl[0].isdigit() and len(cl[0]) <= 18:
                self.content_length = int(cl[0])
                return
            values = {p.strip(b" \t") for v in cl for p in v.split(b",")}
            if len(values) != 1:
                raise err(status, f"conflicting Content-Length values {sorted(values)}")
            (value,) = values
            if not value.isdigit() or len(value) > 18:
                raise err(status, f"invalid Content-Length {_show(value)} (RFC 9110 §8.6)")
            self.content_length = int(value)
            self.collapsed = True


def _one_content_length(headers: Headers, f: _Fields) -> Headers:
    """RFC 9110 §8.6: a recipient of ``Content-Length: 42, 42`` (or of 42 on several lines)
    "MUST either reject the message as invalid or replace the duplicated field values with a
    single valid Content-Length field containing that decimal value prior to determining the
    message body length or forwarding the message": a proxy must not pass on what a stricter
    next hop may refuse or read differently."""
    if not f.collapsed:
        return headers
    return set_header(headers, b"content-length", b"%d" % (f.content_length or 0))


class Connection:
    """One HTTP/1.1 connection seen from one side; pure state, no I/O.

    Loop: ``receive_data(bytes)`` (``b""`` is EOF) then ``next_event()`` until ``NEED_DATA``
    (read more) or ``PAUSED`` (stop reading: the cycle is done — answer, then
    ``start_next_cycle()`` — or a protocol switch is pending/done, see ``trailing_data``).
    ``send(event)`` returns the bytes to write. A refused peer message raises
    :class:`RemoteProtocolError` (the peer is then in ERROR); misuse raises
    :class:`LocalProtocolError` (we are then in ERROR).
    """

    __slots__ = (
        "_our_role",
        "_their_role",
        "_limits",
        "_sm",
        "_buf",
        "_pos",
        "_eof",
        "_scanned",
        "_recv_mode",
        "_recv_left",
        "_chunk_phase",
        "_send_mode",
        "_send_left",
        "_send_why",
        "_request_method",
        "_their_version",
        "_waiting_100",
    )

    def __init__(self, role: Role, *, limits: Limits | None = None) -> None:
        self._our_role = role
        self._their_role = _S if role is _C else _C
        self._limits = limits if limits is not None else Limits()
        self._sm = _StateMachine()
        self._buf = b""  # received bytes; those before _pos are consumed
        self._pos = 0
        self._eof = False
        self._scanned = 0  # bytes after _pos already searched for an end of section
        self._recv_mode = _LENGTH
        self._recv_left = 0
        self._chunk_phase = _CH_SIZE
        self._send_mode = _LENGTH
        self._send_left = 0
        self._send_why = ""
        self._request_method: bytes | None = None
        self._their_version: bytes | None = None
        self._waiting_100 = False

    # ----------------------------------------------------------------------------- state

    @property
    def our_role(self) -> Role:
        return self._our_role

    @property
    def their_role(self) -> Role:
        return self._their_role

    @property
    def states(self) -> dict[Role, State]:
        return {_C: self._sm.client, _S: self._sm.server}

    @property
    def our_state(self) -> State:
        return self._sm.client if self._our_role is _C else self._sm.server

    @property
    def their_state(self) -> State:
        return self._sm.server if self._our_role is _C else self._sm.client

    @property
    def keep_alive(self) -> bool:
        """False once either side said the connection ends after this cycle."""
        return self._sm.keep_alive

    @property
    def their_http_version(self) -> bytes | None:
        return self._their_version

    @property
    def request_method(self) -> bytes | None:
        """Method of the request of the current cycle (sent or received)."""
        return self._request_method

    @property
    def client_is_waiting_for_100_continue(self) -> bool:
        """The request said ``Expect: 100-continue`` (RFC 9110 §10.1.1) and neither a response
        nor any of its content has been sent since."""
        return self._waiting_100

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        """Server side: send ``InformationalResponse(100)`` before reading the body."""
        return self._their_role is _C and self._waiting_100

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Received bytes not yet parsed, and whether EOF was seen: after SWITCHED_PROTOCOL,
        the first bytes of the tunnelled protocol."""
        return self._buf[self._pos :], self._eof

    def start_next_cycle(self) -> None:
        """Reset both parties to IDLE after a keep-alive request/response (RFC 9112 §9.3)."""
        self._sm.start_next_cycle()
        self._request_method = None
        self._waiting_100 = False
        self._scanned = 0

    # --------------------------------------------------------------------------- receive

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (copied unless ``bytes``); ``b""`` means the peer closed (EOF)."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError(500, "receive_data() after EOF")
        chunk = data if type(data) is bytes else bytes(data)
        if self._pos == len(self._buf):
            self._buf = chunk
        else:
            self._buf = self._buf[self._pos :] + chunk
        self._pos = 0

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA, Sentinel.PAUSED]:
        sm = self._sm
        their = sm.server if self._our_role is _C else sm.client
        if their is _ER:
            raise RemoteProtocolError(self._hint(400), "peer already sent something refused")
        try:
            return self._next(their)
        except ProtocolError as exc:
            sm.error(self._their_role)
            hint = self._hint(exc.status_hint if isinstance(exc, RemoteProtocolError) else 400)
            if isinstance(exc, RemoteProtocolError) and hint == exc.status_hint:
                raise
            raise RemoteProtocolError(hint, exc.reason) from exc

    def _hint(self, status: int) -> int:
        # What we answer downstream: a bad upstream response is a 502 whatever the rule.
        return 502 if self._our_role is _C else status

    def _next(self, their: State) -> Event | Literal[Sentinel.NEED_DATA, Sentinel.PAUSED]:
        event: Event | None
        if their is _SB:
            event = self._read_body()
        elif their is _I or their is _SR:
            if their is _I and self._our_role is _S and self._sm.server is not _I:
                # We answered without a request (e.g. 408/400): process nothing more (§9.6).
                if self._pos < len(self._buf):
                    return PAUSED
                event = None
            else:
                event = self._read_head()
        elif their is _DN or their is _MC or their is _CL:
            if self._pos < len(self._buf):
                return PAUSED  # pipelined bytes wait for start_next_cycle()
            event = None
        else:  # MIGHT_SWITCH_PROTOCOL, SWITCHED_PROTOCOL
            return PAUSED
        if event is not None:
            return event
        if not self._eof:
            return NEED_DATA
        return self._at_eof(their)

    def _at_eof(self, their: State) -> Event:
        if their is _SB:
            if self._recv_mode == _UNTIL_CLOSE:
                self._sm.fire(self._their_role, EndOfMessage)
                return _END
            raise RemoteProtocolError(400, "connection closed inside a message body (RFC 9112 §8)")
        if self._pos < len(self._buf):
            raise RemoteProtocolError(400, "connection closed inside a header section (§8)")
        self._sm.fire(self._their_role, ConnectionClosed)
        return ConnectionClosed()

    def _find_section_end(self, what: str) -> int:
        """Index of the CRLF CRLF ending the section starting at _pos, or -1 after checking that
        what arrived so far may still become a valid section."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n\r\n", pos + self._scanned - 3 if self._scanned > 3 else pos)
        if end >= 0:
            self._scanned = 0
            return end
        limits = self._limits
        avail = len(buf) - pos
        if what == "header":
            if self._our_role is _S:
                if buf[pos : pos + 1] not in _TOKEN_BYTES:
                    tls = " (a TLS handshake on a plaintext port?)" if buf[pos] == 0x16 else ""
                    raise RemoteProtocolError(
                        400,
                        f"not an HTTP/1.1 request: starts with {_show(buf[pos : pos + 8])}{tls}",
                    )
                if (
                    avail > limits.max_request_line
                    and buf.find(b"\r\n", pos, pos + limits.max_request_line + 2) < 0
                ):
                    raise RemoteProtocolError(
                        414, f"request line longer than {limits.max_request_line} bytes"
                    )
            elif not b"HTTP/".startswith(buf[pos : pos + 5]):
                raise RemoteProtocolError(
                    502, f"not an HTTP/1.x response: starts with {_show(buf[pos : pos + 8])}"
                )
        if avail > limits.max_header_bytes:
            raise RemoteProtocolError(
                431, f"{what} section larger than the limit of {limits.max_header_bytes} bytes"
            )
        if buf.find(b"\n\n", pos + self._scanned - 1 if self._scanned > 1 else pos) >= 0:
            raise RemoteProtocolError(400, f"bare LF ending a {what} line (RFC 9112 §2.2)")
        self._scanned = avail
        return -1

    def _read_head(self) -> Event | None:
        buf = self._buf
        if buf.startswith(b"\r\n", self._pos):
            # RFC 9112 §2.2: ignore empty lines received before the start line.
            m = _LEADING_CRLF.match(buf, self._pos)
            assert m is not None
            self._pos = m.end()
            self._scanned = 0
        pos = self._pos
        if pos == len(buf) or (pos == len(buf) - 1 and buf[pos] == 0x0D):
            return None  # nothing yet, or a CR that may begin an empty line to be ignored
        end = self._find_section_end("header")
        if end < 0:
            return None
        limits = self._limits
        line_end = buf.find(b"\r\n", pos)
        if line_end - pos > limits.max_request_line and self._our_role is _S:
            raise RemoteProtocolError(
                414, f"request line longer than {limits.max_request_line} bytes"
            )
        if end + 4 - pos > limits.max_header_bytes:
            raise RemoteProtocolError(
                431, f"header section larger than the limit of {limits.max_header_bytes} bytes"
            )
        line = buf[pos:line_end]
        section = buf[line_end + 2 : end + 2]
        self._pos = end + 4
        headers = parse_field_section(section, limits.max_headers)
        if self._our_role is _S:
            return self._received_request(line, headers)
        return self._received_response(line, headers)

    def _received_request(self, line: bytes, headers: Headers) -> Request:
        m = _REQUEST_LINE.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(400, _explain_request_line(line))
        method, target, major, minor = m.groups()
        if major != b"1":
            # RFC 9110 §15.6.6: 505 HTTP Version Not Supported.
            raise RemoteProtocolError(505, f"HTTP version {major.decode()}.{minor.decode()}")
        _check_target(method, target)
        f = _Fields(headers, remote=True)
        headers = _one_content_length(headers, f)
        http10 = minor == b"0"
        # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1 (at most one in 1.0), else 400.
        if len(f.hosts) > 1 or (not f.hosts and not http10):
            raise RemoteProtocolError(400, f"{len(f.hosts)} Host fields (RFC 9112 §3.2)")
        if f.hosts and _HOST.fullmatch(f.hosts[0]) is None:
            raise RemoteProtocolError(400, f"invalid Host {_show(f.hosts[0])} (RFC 9112 §3.2)")
        if f.chunked:
            if http10:
                # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
                raise RemoteProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request (§6.1)")
            self._recv_mode, self._chunk_phase = _CHUNKED, _CH_SIZE
        else:
            # RFC 9112 §6.3 rules 6 and 7: Content-Length, else no content.
            self._recv_mode, self._recv_left = _LENGTH, f.content_length or 0
        version = line[-3:]
        event = Request(method, target, headers, version)
        self._on_request(event, f, http10)
        self._their_version = version
        return event

    def _received_response(self, line: bytes, headers: Headers) -> Event:
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(502, f"malformed status line {_show(line)} (RFC 9112 §4)")
        major, minor, code, reason = m.groups()
        if major != b"1":
            raise RemoteProtocolError(502, f"HTTP version {major.decode()}.{minor.decode()}")
        status = int(code)
        if not 100 <= status <= 599:
            raise RemoteProtocolError(502, f"status code {status} out of range (RFC 9110 §15)")
        version = line[5:8]
        self._their_version = version
        if status < 200:
            # RFC 9110 §15.2: any number of 1xx before the final response; no content.
            info = InformationalResponse(status, headers)
            self._sm.fire(_S, InformationalResponse, _Switch.UPGRADE if status == 101 else None)
            self._waiting_100 = False
            return info
        f = _Fields(headers, remote=True)
        event = Response(status, _one_content_length(headers, f), version, reason or b"")
        method = self._request_method
        switch = None
        keep = b"close" not in f.connection and (minor != b"0" or b"keep-alive" in f.connection)
        # RFC 9112 §6.3: response content length, rules 1-8 in order.
        if method == b"HEAD" or status == 204 or status == 304:
            self._recv_mode, self._recv_left = _LENGTH, 0
        elif method == b"CONNECT" and status < 300:
            switch = _Switch.CONNECT  # rule 2: a tunnel follows the header section
            self._recv_mode, self._recv_left = _LENGTH, 0
        elif f.chunked:
            if minor == b"0":
                raise RemoteProtocolError(502, "Transfer-Encoding in an HTTP/1.0 response (§6.1)")
            self._recv_mode, self._chunk_phase = _CHUNKED, _CH_SIZE
        elif f.content_length is not None:
            self._recv_mode, self._recv_left = _LENGTH, f.content_length
        else:
            self._recv_mode = _UNTIL_CLOSE  # rule 8
            keep = False
        self._sm.fire(_S, Response, switch)
        self._waiting_100 = False
        if not keep:
            self._sm.no_keep_alive()
        return event

    def _on_request(self, event: Request, f: _Fields, http10: bool) -> None:
        sm = self._sm
        if event.method == b"CONNECT":
            sm.proposals.add(_Switch.CONNECT)
        # RFC 9110 §7.8: Upgrade needs the "upgrade" connection option; ignored in HTTP/1.0.
        if f.upgrade and not http10 and b"upgrade" in f.connection:
            sm.proposals.add(_Switch.UPGRADE)
        sm.fire(_C, Request)
        self._request_method = event.method
        # RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
        self._waiting_100 = f.expect_100 and not http10
        # RFC 9112 §9.3: "close" ends it; HTTP/1.0 persists only with "keep-alive".
        if b"close" in f.connection or (http10 and b"keep-alive" not in f.connection):
            sm.no_keep_alive()

    def _read_body(self) -> Event | None:
        buf, pos = self._buf, self._pos
        mode = self._recv_mode
        if mode == _LENGTH:
            left = self._recv_left
            if left == 0:
                self._sm.fire(self._their_role, EndOfMessage)
                return _END
            avail = len(buf) - pos
            if avail == 0:
                return None
            n = avail if avail < left else left
            data = buf[pos : pos + n]  # the same object when it is all of buf
            self._pos = pos + n
            self._recv_left = left - n
            if self._their_role is _C:
                self._waiting_100 = False
            return Data(data)
        if mode == _CHUNKED:
            return self._read_chunked()
        if pos == len(buf):  # _UNTIL_CLOSE: everything until EOF
            return None
        self._pos = len(buf)
        return Data(buf[pos:])

    def _read_chunked(self) -> Event | None:
        # RFC 9112 §7.1: chunked-body = *chunk last-chunk trailer-section CRLF
        while True:
            buf, pos = self._buf, self._pos
            phase = self._chunk_phase
            if phase == _CH_DATA:
                avail = len(buf) - pos
                if avail == 0:
                    return None
                left = self._recv_left
                n = avail if avail < left else left
                data = buf[pos : pos + n]
                self._pos = pos + n
                self._recv_left = left - n
                if n == left:
                    self._chunk_phase = _CH_CRLF
                if self._their_role is _C:
                    self._waiting_100 = False
                return Data(data)
            if phase == _CH_CRLF:
                if len(buf) - pos < 2:
                    return None
                if not buf.startswith(b"\r\n", pos):
                    raise RemoteProtocolError(400, "chunk data not followed by CRLF (§7.1)")
                self._pos = pos + 2
                self._chunk_phase = _CH_SIZE
            elif phase == _CH_SIZE:
                limit = self._limits.max_chunk_line
                line_end = buf.find(b"\r\n", pos, pos + limit + 2)
                if line_end < 0:
                    if len(buf) - pos > limit:
                        raise RemoteProtocolError(400, f"chunk-size line over {limit} bytes")
                    if buf.find(b"\n", pos) >= 0:
                        raise RemoteProtocolError(400, "bare LF in a chunk-size line (§2.2)")
                    return None
                m = _CHUNK_LINE.fullmatch(buf, pos, line_end)
                if m is None:
                    raise RemoteProtocolError(
                        400, f"bad chunk-size line {_show(buf[pos:line_end])} (RFC 9112 §7.1)"
                    )
                self._pos = line_end + 2
                size = int(m.group(1), 16)
                if size:
                    self._recv_left = size
                    self._chunk_phase = _CH_DATA
                else:
                    self._chunk_phase = _CH_TRAILER
                    self._scanned = 0
            else:  # _CH_TRAILER, RFC 9112 §7.1.2
                if len(buf) - pos < 2:
                    return None
                if buf.startswith(b"\r\n", pos):
                    self._pos = pos + 2
                    trailers: Headers = ()
                else:
                    end = self._find_section_end("trailer")
                    if end < 0:
                        return None
                    if end + 4 - pos > self._limits.max_header_bytes:
                        raise RemoteProtocolError(
                            431,
                            "trailer section larger than the limit of "
                            f"{self._limits.max_header_bytes} bytes",
                        )
                    trailers = parse_field_section(buf[pos : end + 2], self._limits.max_headers)
                    self._pos = end + 4
                self._sm.fire(self._their_role, EndOfMessage)
                if self._their_role is _C:
                    self._waiting_100 = False
                return EndOfMessage(trailers) if trailers else _END

    # ------------------------------------------------------------------------------ send

    def send(self, event: Event) -> bytes:
        """The bytes that put ``event`` on the wire (``b""`` when there are none)."""
        sm = self._sm
        if self.our_state is _ER:
            raise LocalProtocolError(500, "cannot send after a protocol error on our side")
        try:
            if isinstance(event, Data):
                return self._send_data(event.data)
            if isinstance(event, EndOfMessage):
                return self._send_end(event.trailers)
            if isinstance(event, Response):
                return self._send_response(event)
            if isinstance(event, Request):
                return self._send_request(event)
            if isinstance(event, InformationalResponse):
                return self._send_informational(event)
            if isinstance(event, ConnectionClosed):
                sm.fire(self._our_role, ConnectionClosed)
                return b""
            raise LocalProtocolError(500, f"not an HTTP/1.1 event: {event!r}")
        except ProtocolError as exc:
            sm.error(self._our_role)
            if isinstance(exc, LocalProtocolError):
                raise
            raise LocalProtocolError(500, exc.reason) from exc

    def _send_data(self, data: bytes) -> bytes:
        self._sm.fire(self._our_role, Data)
        if self._our_role is _C:
            self._waiting_100 = False
        mode = self._send_mode
        if mode == _LENGTH:
            n = len(data)
            if n > self._send_left:
                raise LocalProtocolError(
                    500, f"{n - self._send_left} bytes beyond the declared Content-Length"
                )
            self._send_left -= n
            return data
        if mode == _CHUNKED:
            # RFC 9112 §7.1: an empty chunk would end the body, so empty Data writes nothing.
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if mode == _UNTIL_CLOSE or not data:
            return data
        raise LocalProtocolError(500, f"no content allowed: {self._send_why}")

    def _send_end(self, trailers: Headers) -> bytes:
        mode = self._send_mode
        if trailers and mode != _CHUNKED:
            raise LocalProtocolError(500, "trailers need chunked framing (RFC 9112 §7.1.2)")
        if mode == _LENGTH and self._send_left:
            raise LocalProtocolError(
                500, f"{self._send_left} bytes short of the declared Content-Length"
            )
        out = b""
        if mode == _CHUNKED:
            rendered = render_headers(trailers) if trailers else b""
            if trailers and not valid_field_section(rendered):
                raise LocalProtocolError(500, explain_sent_section(trailers))
            out = b"0\r\n" + rendered + b"\r\n"
        self._sm.fire(self._our_role, EndOfMessage)
        if self._our_role is _C:
            self._waiting_100 = False
        return out

    def _head(self, start_line: bytes, headers: Headers) -> bytes:
        rendered = render_headers(headers)
        if not valid_field_section(rendered):
            raise LocalProtocolError(500, explain_sent_section(headers))
        return b"%s\r\n%s\r\n" % (start_line, rendered)

    def _send_request(self, event: Request) -> bytes:
        if self._our_role is not _C:
            raise LocalProtocolError(500, "a server does not send requests")
        method, target = event.method, event.target
        if _METHOD.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
            raise LocalProtocolError(500, f"invalid request line {_show(method + b' ' + target)}")
        f = _Fields(event.headers, remote=False)
        if len(f.hosts) != 1:
            raise LocalProtocolError(500, "an HTTP/1.1 request needs one Host (RFC 9112 §3.2)")
        head = self._head(b"%s %s HTTP/1.1" % (method, target), event.headers)
        self._on_request(event, f, http10=False)
        if f.chunked:
            self._send_mode = _CHUNKED
        elif f.content_length is not None:
            self._send_mode, self._send_left = _LENGTH, f.content_length
        else:
            self._send_mode, self._send_left = _NO_CONTENT, 0
            self._send_why = "request without Content-Length or Transfer-Encoding (§6.3)"
        return head

    def _send_informational(self, event: InformationalResponse) -> bytes:
        status = event.status
        if self._our_role is not _S or not 100 <= status <= 199:
            raise LocalProtocolError(500, f"InformationalResponse({status}) from {self._our_role}")
        if self._their_version == b"1.0":
            return b""  # RFC 9110 §15.2: MUST NOT send a 1xx to an HTTP/1.0 client
        head = self._head(b"HTTP/1.1 %d %s" % (status, _PHRASES.get(status, b"")), event.headers)
        self._sm.fire(_S, InformationalResponse, _Switch.UPGRADE if status == 101 else None)
        self._waiting_100 = False
        return head

    def _send_response(self, event: Response) -> bytes:
        status, headers = event.status, event.headers
        if self._our_role is not _S or not 200 <= status <= 599:
            raise LocalProtocolError(500, f"Response({status}) from {self._our_role}")
        reason = event.reason or _PHRASES.get(status, b"")
        if event.reason and _REASON.fullmatch(reason) is None:
            raise LocalProtocolError(500, f"invalid reason phrase {_show(reason)}")
        f = _Fields(headers, remote=False)
        method = self._request_method
        peer_10 = self._their_version == b"1.0"
        peer_11 = self._their_version is not None and not peer_10
        # Answering without a request (408, or 400 after a parse error) ends the connection.
        keep = self._sm.keep_alive and b"close" not in f.connection and self._sm.client is not _I
        switch = None
        if status == 204 or (method == b"CONNECT" and status < 300):
            # RFC 9110 §8.6, §9.3.6 / RFC 9112 §6.1: MUST NOT send Content-Length or
            # Transfer-Encoding in a 204 or a 2xx to CONNECT.
            if f.content_length is not None or f.chunked:
                headers = remove_headers(headers, (b"content-length", b"transfer-encoding"))
            self._send_mode = _NO_CONTENT
            self._send_why = f"{status} response to {(method or b'?').decode()}"
            if method == b"CONNECT" and status < 300:
                switch = _Switch.CONNECT
        elif status == 304 or method == b"HEAD":
            # The framing fields describe the content a GET would have had (RFC 9110 §9.3.2).
            self._send_mode = _NO_CONTENT
            self._send_why = f"{status} response to {(method or b'?').decode()}"
        elif f.chunked or f.content_length is None:
            # Content of unknown length: chunked to an HTTP/1.1 client, else close-delimited
            # (RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 client).
            if peer_11:
                if not f.chunked:
                    headers = (*headers, (b"transfer-encoding", b"chunked"))
                self._send_mode = _CHUNKED
            else:
                if f.chunked:
                    headers = remove_headers(headers, (b"transfer-encoding",))
                self._send_mode = _UNTIL_CLOSE
                keep = False
        else:
            self._send_mode, self._send_left = _LENGTH, f.content_length
        # RFC 9112 §9.6: announce the close; §9.3: tell an HTTP/1.0 client we keep it open.
        if not keep and b"close" not in f.connection:
            headers = _set_connection(headers, f.connection, b"close", b"keep-alive")
        elif keep and peer_10 and b"keep-alive" not in f.connection:
            headers = _set_connection(headers, f.connection, b"keep-alive", b"close")
        head = self._head(b"HTTP/1.1 %d %s" % (status, reason), headers)
        self._sm.fire(_S, Response, switch)
        self._waiting_100 = False
        if not keep:
            self._sm.no_keep_alive()
        return head


def _set_connection(headers: Headers, tokens: list[bytes], add: bytes, drop: bytes) -> Headers:
    kept = [t for t in tokens if t != drop]
    return set_header(headers, b"connection", b", ".join([*kept, add]))


def _check_target(method: bytes, target: bytes) -> None:
    """RFC 9112 §3.2: the request-target form must fit the method."""
    if method == b"CONNECT":
        if _AUTHORITY_FORM.fullmatch(target) is None:
            raise RemoteProtocolError(
                400, f"CONNECT needs authority-form host:port, got {_show(target)} (§3.2.3)"
            )
    elif target[0] == 0x2F:  # "/" origin-form, §3.2.1
        return
    elif target == b"*":
        if method != b"OPTIONS":
            raise RemoteProtocolError(400, "asterisk-form is only for OPTIONS (§3.2.4)")
    elif _ABSOLUTE_FORM.match(target) is None:
        raise RemoteProtocolError(400, f"invalid request-target {_show(target)} (§3.2)")


def _explain_request_line(line: bytes) -> str:
    if b"\n" in line or b"\r" in line:
        return f"bare CR or LF in request line {_show(line)} (RFC 9112 §2.2)"
    parts = line.split(b" ")
    if len(parts) != 3:
        return f"request line {_show(line)} is not method SP target SP version (RFC 9112 §3)"
    if _METHOD.fullmatch(parts[0]) is None:
        return f"invalid method {_show(parts[0])} (RFC 9110 §9.1)"
    if _TARGET.fullmatch(parts[1]) is None:
        return f"invalid request-target {_show(parts[1])} (RFC 9112 §3.2)"
    return f"invalid HTTP version {_show(parts[2])} (RFC 9112 §2.3)"
