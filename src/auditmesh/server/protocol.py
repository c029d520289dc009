"""The HTTP/1.1 connection protocol of both listeners: uvicorn's httptools protocol with
deadlines on what a client sends outside of the app's reach (slowloris).

uvicorn times out only the idle time after a response (its keep-alive timeout), and any byte
received stops that clock. Two ways of holding a connection for ever by sending a byte now
and then (or nothing at all on a new connection) are closed here:

- The request head: it must be whole within `header_timeout_s` of the connection's start,
  or on a kept-alive connection of its first byte (blank lines before it count as its start).
  Past that the client gets 408 with `Connection: close` when part of a head came, else the
  connection is just closed; a response still being written is sent first, then the
  connection closes.
- The body of a request answered before its body was read (401, 403, 413 judged from the
  Content-Length, 415): uvicorn keeps the connection and discards the rest of the body, so
  the client can read the answer. That body must still be whole within `body_timeout_s` of
  its request head (as `httpbody.BodyDeadline` asks of a body the app reads), else the
  connection is closed.

And one way of holding it by reading nothing: answers the client does not read wait in the
transport's write buffer, an answer in parts waits for it to drain, and closing the
connection waits for that too, without any limit. So while bytes wait there, some of them
must go within each `body_timeout_s` (the buffer shrinks, or drains below its low-water
mark), else the connection is aborted (`_watch_writes`; nginx's send_timeout is alike).

And a listener holds at most `max_connections` connections open at once (`ConnectionLimit`),
so that a client opening connections faster than the deadlines close them cannot take all of
the process's file descriptors. A connection takes its place as it is accepted (`admit`), so
a TLS connection in its handshake holds one too. The TLS layer is put in front of each
connection by `admit` itself, not by the listener (whose layer never tells the protocol of a
handshake that failed, so the place stayed taken until the handshake timeout had surely
passed): the handshake must end within `header_timeout_s`, and one that fails, times out or
is cut off gives its place back as it ends (`handshake_over`). One past the limit is answered
503 with `Connection: close` and closed as soon as it is a connection: at once on a plain
listener, after its handshake on a TLS one (meanwhile it holds a file descriptor, for the
handshake's time at most, but no place).

However the server closes a TLS connection (a refusal, a deadline above, uvicorn's keep-alive
timeout, an answer with `Connection: close`, an error), the close sends what was written, then
the server's close_notify, and waits at most `CLOSE_LINGER_S` for the client's (the TLS
layer's `ssl_shutdown_timeout`) before the connection is aborted: RFC 8446 §6.1 does not ask
the server to wait for it, and uvloop's default, 30 s, let a client that never sends it hold
the connection's descriptor, and its place under the limit, that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias, TypeVar, cast

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from auditmesh.httpbody import BODY_TIMEOUT_S

HEADER_TIMEOUT_S = 10.0  # `auditmesh server --header-timeout`, and the TLS handshake's
REFUSAL_REPORT_S = 10.0  # a listener says it refused connections at most this often
CLOSE_LINGER_S = 1.0  # how long a TLS connection the server closed may flush and wait for
# the client's close_notify before it is aborted (the TLS layer's ssl_shutdown_timeout)
# The ASGI 3 app uvicorn hands to `_start_asgi_task`: its own name for the type,
# ASGI3Application, is in the private uvicorn._types; any async callable is accepted here.
AsgiApp: TypeAlias = Callable[..., Awaitable[None]]


class Slot:
    """One open connection's place under its listener's `ConnectionLimit`."""

    def __init__(self, limit: ConnectionLimit) -> None:
        self._limit: ConnectionLimit | None = limit

    def release(self) -> None:
        """Gives the place back (once, whoever of the connection's owners calls first)."""
        if self._limit is not None:
            self._limit.open -= 1
            self._limit = None


class ConnectionLimit:
    """The connections one listener holds open, TLS handshakes included: at most `limit`
    (`auditmesh server --max-connections`)."""

    def __init__(
        self, limit: int, *, report: Callable[[str], None] = lambda text: print(text, flush=True)
    ) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0  # since the start
        self._report = report
        self._reported_at = -REFUSAL_REPORT_S
        self._reported = 0  # `refused` when last reported

    def take(self, *, last_try: bool = True) -> Slot | None:
        """A place for a new connection, or None (then, on its `last_try`, a refusal is
        counted, and reported now and then)."""
        if self.open < self.limit:
            self.open += 1
            return Slot(self)
        if not last_try:
            return None
        self.refused += 1
        now = time.monotonic()
        if now - self._reported_at >= REFUSAL_REPORT_S:
            self._report(
                f"auditmesh server: refused {self.refused - self._reported} new connection(s): "
                f"{self.limit} already open on this listener (--max-connections; raise it, "
                "and the open-file limit, ulimit -n, if these are clients you want)"
            )
            self._reported_at, self._reported = now, self.refused
        return None


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on the request head and on a body
    discarded after its answer; `with_deadlines` makes one with other deadlines."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    connection_limit: ConnectionLimit | None = None  # the listener's; None: no limit

    slot: Slot | None = None  # this connection's place, taken at its acceptance (`admit`)
    _made = False  # connection_made was called (a TLS connection: its handshake is over)

    _head_timer: asyncio.TimerHandle | None = None
    _discard_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _write_waiting = 0  # bytes in the write buffer when _write_timer was armed
    _write_drained = False  # the buffer fell below its low-water mark since then
    _running: RequestResponseCycle | None = None  # the request being answered
    _between_messages = True  # the parser waits for (or reads) a request head
    _head_begun = False  # the parser has part of a request head
    _body_deadline = 0.0  # loop time by which the current request's body must be whole

    def accepted(self) -> None:
        """Takes this connection's place as it is accepted (`admit`), before its TLS
        handshake if it has one; without a place it is refused (and counted as refused) in
        connection_made, unless one came free meanwhile."""
        if self.connection_limit is not None:
            self.slot = self.connection_limit.take(last_try=False)

    def handshake_over(self, handshake: asyncio.Future[None]) -> None:
        """The TLS layer's handshake ended (`admit`): made, connection_made was called
        first; else it failed, timed out or was cut off, made no connection and is never
        told to the protocol, so its place is given back now."""
        if not handshake.cancelled():
            handshake.exception()  # the client's failure, not the server's: not logged
        if not self._made:
            self._give_back()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._made = True
        limit = self.connection_limit
        if self.slot is None and limit is not None:
            self.slot = limit.take()
            if self.slot is None:
                transport.write(self._refusal(limit))
                transport.close()  # a TLS one within CLOSE_LINGER_S
                return
        self._arm_head_timer()  # a connection that never sends a whole head is cut too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._give_back()
        super().connection_lost(exc)

    def _give_back(self) -> None:
        if self.slot is not None:
            self.slot.release()
            self.slot = None

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_drained = True

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: AsgiApp) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _watch_writes(self) -> None:
        """Arms the write deadline while bytes wait in the transport for the client."""
        if self._write_timer is not None or self.transport is None:
            return
        waiting = self.transport.get_write_buffer_size()
        if waiting:
            self._write_waiting, self._write_drained = waiting, False
            self._write_timer = self.loop.call_later(self.body_timeout_s, self._write_timed_out)

    def _write_timed_out(self) -> None:
        self._write_timer = None
        waiting = self.transport.get_write_buffer_size()
        if waiting and waiting >= self._write_waiting and not self._write_drained:
            self._abort()  # nothing read for body_timeout_s: give up what waits
        else:
            self._watch_writes()  # some went: the next stretch

    def _abort(self) -> None:
        """Ends the connection now: a reset, so that the kernel drops what it holds for
        the client too (a plain close would go on sending it)."""
        for cycle in (self._running, self.cycle):  # a pipelined request's too
            if cycle is not None:  # its sends go nowhere (uvloop raises on a closed one)
                cycle.disconnected = True
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _should_upgrade_to_ws(self) -> bool:
        """No WebSocket: the server has no WebSocket route, and uvicorn would hand the
        connection to a protocol of its own, outside of these deadlines and without ever
        giving back its place. An upgrade offer is answered as a plain request, which a
        server may do (RFC 9110 §7.8)."""
        return False

    def _unsupported_upgrade_warning(self) -> None:
        pass  # uvicorn's: "No supported WebSocket library", once per offer, for anyone

    def data_received(self, data: bytes) -> None:
        if self._between_messages:  # also blank lines, which begin no message
            self._arm_head_timer()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # the end of a discarded body may have re-armed uvicorn's idle timeout in this read
        self._unset_keepalive_if_required()
        self._head_begun = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._between_messages = self._head_begun = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body_deadline = self.loop.time() + self.body_timeout_s
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._between_messages = True
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None
            # the body came after its answer, whose idle timeout each read of it unset
            if not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_writes()  # an answer the client has not read yet, closing or not
        answered_early = not self._between_messages and self.cycle.response_complete
        if answered_early and not self.transport.is_closing():
            self._discard_timer = self.loop.call_at(self._body_deadline, self._discard_timed_out)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._discard_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._discard_timer = self._write_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the answer in progress goes out, then the close
            return
        if self._head_begun:
            self.transport.write(self._timeout_response())
        self.transport.close()
        self._watch_writes()  # answers still unread hold the close

    def _discard_timed_out(self) -> None:
        self._discard_timer = None
        self.transport.close()  # the request was answered already
        self._watch_writes()

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(msg)  # uvicorn's, for a request it cannot parse: closes
        self._watch_writes()

    def _timeout_response(self) -> bytes:
        error = (
            f"the request head did not arrive whole within {self.header_timeout_s:g} s "
            "(the server's --header-timeout), so the request was not read: send it again "
            "on a new connection"
        )
        return self._closing_answer(408, {"error": error, "timeout_s": self.header_timeout_s})

    def _refusal(self, limit: ConnectionLimit) -> bytes:
        error = (
            f"the server has {limit.limit} connections open on this listener, its limit "
            "(the server's --max-connections), so this one was not served: try again later, "
            "or have the server's operator raise --max-connections"
        )
        answer = {"error": error, "max_connections": limit.limit}
        return self._closing_answer(503, answer, [(b"retry-after", b"1")])

    def _closing_answer(
        self, status: int, answer: dict[str, object], extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> bytes:
        """A whole JSON answer with `Connection: close`, written outside of the app."""
        body = json.dumps(answer).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        lines = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in headers)]
        return b"".join([*lines, b"\r\n", body])


def admit(
    make: Callable[[], DeadlineProtocol], *, tls: ssl.SSLContext | None
) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory of a listener (for `loop.create_server`, which calls it as it
    accepts a connection; without its `ssl`): each connection takes its place then, and with
    `tls` gets its TLS layer here, asyncio.sslproto.SSLProtocol (what asyncio's loops put in
    front of a TLS connection, ported from uvloop's; not exported by asyncio, but the same
    signature since Python 3.11), whose handshake, bounded by the header timeout, tells the
    protocol how it ended (`handshake_over`)."""

    def accept() -> asyncio.BaseProtocol:
        protocol = make()
        protocol.accepted()
        if tls is None:
            return protocol
        handshake: asyncio.Future[None] = protocol.loop.create_future()
        handshake.add_done_callback(protocol.handshake_over)
        return sslproto.SSLProtocol(
            protocol.loop,
            protocol,
            tls,
            handshake,
            server_side=True,
            # seconds, for loop.call_later: a float (typeshed says int)
            ssl_handshake_timeout=protocol.header_timeout_s,  # type: ignore[arg-type]
            ssl_shutdown_timeout=CLOSE_LINGER_S,
        )

    return accept


P = TypeVar("P", bound=DeadlineProtocol)


def with_deadlines(
    protocol: type[P],
    *,
    header_timeout_s: float,
    body_timeout_s: float,
    max_connections: int | None = None,
) -> type[P]:
    """A subclass of `protocol` with these deadlines and a `ConnectionLimit` of its own, for
    one listener (uvicorn makes one protocol object per connection from a class, so the
    server's options are set on the class)."""
    settings = {
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
        "connection_limit": None if max_connections is None else ConnectionLimit(max_connections),
    }
    return cast(type[P], type(protocol.__name__, (protocol,), settings))
