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
"""

from __future__ import annotations

import asyncio
import json
from typing import TypeVar, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from auditmesh.httpbody import BODY_TIMEOUT_S

HEADER_TIMEOUT_S = 10.0  # `auditmesh server --header-timeout`


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on the request head and on a body
    discarded after its answer; `with_deadlines` makes one with other deadlines."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    _head_timer: asyncio.TimerHandle | None = None
    _discard_timer: asyncio.TimerHandle | None = None
    _between_messages = True  # the parser waits for (or reads) a request head
    _head_begun = False  # the parser has part of a request head
    _body_deadline = 0.0  # loop time by which the current request's body must be whole

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a whole head is cut too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

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
        answered_early = not self._between_messages and self.cycle.response_complete
        if answered_early and not self.transport.is_closing():
            self._discard_timer = self.loop.call_at(self._body_deadline, self._discard_timed_out)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._discard_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._discard_timer = None

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

    def _discard_timed_out(self) -> None:
        self._discard_timer = None
        self.transport.close()  # the request was answered already

    def _timeout_response(self) -> bytes:
        error = (
            f"the request head did not arrive whole within {self.header_timeout_s:g} s "
            "(the server's --header-timeout), so the request was not read: send it again "
            "on a new connection"
        )
        body = json.dumps({"error": error, "timeout_s": self.header_timeout_s}).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        lines = [STATUS_LINE[408], *(name + b": " + value + b"\r\n" for name, value in headers)]
        return b"".join([*lines, b"\r\n", body])


P = TypeVar("P", bound=DeadlineProtocol)


def with_deadlines(protocol: type[P], *, header_timeout_s: float, body_timeout_s: float) -> type[P]:
    """A subclass of `protocol` with these deadlines (uvicorn makes one protocol object per
    connection from a class, so the server's options are set on the class)."""
    settings = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s}
    return cast(type[P], type(protocol.__name__, (protocol,), settings))
