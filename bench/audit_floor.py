"""The floor of an auditing HTTP proxy in CPython, for `bench.proxy_bench`.

`bench.relay` copies bytes and nothing else. This adds the least an auditing HTTP/1.1 proxy
must do for every request, written the cheapest way CPython allows (callbacks on the
transport, no coroutine, no stream): parse the request and response heads (httptools, C),
count the body bytes, and at the end of each response build the request's `AuditEvent`
(the real model: identities from the peer certificate, method, path, status, bytes, trace
and request ids, duration) and write it as JSON, batched, to a file. What it leaves out and
the sidecar does: header rewriting (traceparent, x-request-id, XFCC), hop-by-hop handling,
limits, timeouts, policy, pooling, retries, and sending the events to the server over mTLS.
So its CPU per request is a floor for any design of the sidecar's data plane: if this is
above 1.5× nginx's, the target is out of reach of CPython; below it, a rewrite may reach it.

    python -m bench.audit_floor --events FILE [bench.relay's options]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Sequence

import httptools
import uvloop
from cryptography import x509

from auditmesh.events import (
    HTTP,
    TLS,
    AuditEvent,
    Peer,
    Trace,
    encode_ndjson,
    new_event_id,
    random_bytes,
)
from auditmesh.proxy.http1 import Connection, Role, State
from auditmesh.proxy.http1_events import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    Response,
)
from bench.relay import Half, add_relay_options, serve

FLUSH_EVENTS = 256


class Sink:
    """Events as JSON lines, written in batches (the emitter batches too)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._events: list[AuditEvent] = []

    def add(self, event: AuditEvent) -> None:
        self._events.append(event)
        if len(self._events) >= FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        if self._events:  # as the sidecar's emitter encodes a batch
            os.write(self._fd, encode_ndjson(self._events))
            self._events = []


class _Call:
    __slots__ = ("start_ns", "method", "path", "user_agent", "request_id", "traceparent", "sent")

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.method = ""
        self.path = b""
        self.user_agent: bytes | None = None
        self.request_id: bytes | None = None
        self.traceparent: bytes | None = None
        self.sent = 0

    def header(self, lowercase_name: bytes, value: bytes) -> None:
        """Keep the request header fields the event records."""
        if lowercase_name == b"user-agent":
            self.user_agent = value
        elif lowercase_name == b"x-request-id":
            self.request_id = value
        elif lowercase_name == b"traceparent":
            self.traceparent = value


class AuditedHalf(Half):
    """The downstream side parses requests, its upstream peer parses responses; a finished
    response makes its request's event."""

    def __init__(self, sink: Sink, direction: str, *, downstream: bool) -> None:
        super().__init__()
        self.sink = sink
        self.direction = direction
        self.downstream = downstream
        self.status = 0
        self.calls: deque[_Call] = deque()
        self.current: _Call | None = None
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser
        if downstream:
            self.parser = httptools.HttpRequestParser(self)
        else:
            self.parser = httptools.HttpResponseParser(self)
        self.received = 0
        self.local = Peer(service="app", namespace="bench")
        self.remote = Peer()
        self.tls: TLS | None = None

    def connection_made(self, transport: object) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        assert self.transport is not None
        ssl_object = self.transport.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        if der:  # once a connection: who is on the other end
            cert = x509.load_der_x509_certificate(der)
            uri = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.remote = Peer(identity=uri.get_values_for_type(x509.UniformResourceIdentifier)[0])
            self.tls = TLS(mutual=True, version=ssl_object.version())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()
            return
        super().data_received(data)

    # requests (downstream side)
    def on_message_begin(self) -> None:
        if isinstance(self.parser, httptools.HttpRequestParser):
            self.current = _Call()
        else:
            self.received = 0

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        call = self.current
        if call is None or not isinstance(self.parser, httptools.HttpRequestParser):
            return
        call.header(name.lower(), value)

    def on_body(self, body: bytes) -> None:
        if isinstance(self.parser, httptools.HttpRequestParser):
            assert self.current is not None
            self.current.sent += len(body)
        else:
            self.received += len(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        if isinstance(parser, httptools.HttpRequestParser):
            assert self.current is not None
            self.current.method = parser.get_method().decode()
            self.calls.append(self.current)
            self.current = None
            return
        downstream = self.peer
        if not isinstance(downstream, AuditedHalf) or not downstream.calls:
            return
        downstream.audit(downstream.calls.popleft(), parser.get_status_code(), self.received)

    def audit(self, call: _Call, status: int, received: int) -> None:
        now = time.time_ns()
        trace_id = None
        if call.traceparent is not None and len(call.traceparent) == 55:
            trace_id = call.traceparent[3:35].decode()
        trace = Trace(trace_id=trace_id or random_bytes(16).hex(), span_id=random_bytes(8).hex())
        inbound = self.direction == "inbound"
        other = self if inbound or self.peer is None else self.peer  # who proved an identity
        assert isinstance(other, AuditedHalf)
        self.sink.add(
            AuditEvent(
                id=new_event_id(lambda: call.start_ns),
                time_ns=call.start_ns,
                duration_us=(now - call.start_ns) // 1000,
                reporter="spiffe://cluster.local/ns/bench/sa/floor",
                kind="http",
                direction="inbound" if inbound else "outbound",
                source=other.remote if inbound else self.local,
                destination=self.local if inbound else other.remote,
                tls=other.tls,
                http=HTTP(
                    method=call.method,
                    path=call.path.decode("latin-1"),
                    status=status,
                    request_bytes=call.sent,
                    response_bytes=received,
                    protocol="HTTP/1.1",
                    user_agent=None if call.user_agent is None else call.user_agent.decode(),
                    request_id=None if call.request_id is None else call.request_id.decode(),
                ),
                trace=trace,
                outcome="success" if status < 500 else "failure",
                attested=True,
            )
        )


class CoreHalf(AuditedHalf):
    """The same floor with auditmesh's own sans-IO HTTP/1.1 core (`proxy/http1.py`) in
    place of httptools: each request and response is parsed into events and written out
    again, as the sidecar does (`--parser core`). Its cost over `AuditedHalf` is what the
    core adds; the rest of the sidecar's gap over this is its I/O layer and extra work."""

    def __init__(self, sink: Sink, direction: str, *, downstream: bool) -> None:
        super().__init__(sink, direction, downstream=downstream)
        self.down = Connection(Role.SERVER)  # downstream half: requests in, responses out
        self.up = Connection(Role.CLIENT)  # requests out, responses in

    def data_received(self, data: bytes) -> None:
        down = (
            self
            if self.peer is None or isinstance(self.parser, httptools.HttpRequestParser)
            else self.peer
        )
        assert isinstance(down, CoreHalf)
        if down is self:
            self.down.receive_data(data)
            self.drive_requests()
        else:
            down.up.receive_data(data)
            down.drive_responses()

    def _to_upstream(self, data: bytes) -> None:
        other = self.peer
        if other is None or other.transport is None:
            self.pending.append(data)
        else:
            other.transport.write(data)

    def drive_requests(self) -> None:
        out = b""
        while True:
            try:
                event = self.down.next_event()
            except ProtocolError:
                if self.transport is not None:
                    self.transport.close()
                return
            if event is NEED_DATA or event is PAUSED:
                break
            if isinstance(event, Request):
                call = _Call()
                call.method = event.method.decode()
                call.path = event.target
                for name, value in event.headers:  # names come lowercased from the core
                    call.header(name, value)
                self.calls.append(call)
                out += self.up.send(Request(event.method, event.target, event.headers))
            elif isinstance(event, Data):
                self.calls[-1].sent += len(event.data)
                out += self.up.send(event)
            elif isinstance(event, EndOfMessage):
                out += self.up.send(event)
            else:  # ConnectionClosed
                if self.transport is not None:
                    self.transport.close()
                break
        if out:
            self._to_upstream(out)

    def drive_responses(self) -> None:
        out = b""
        while True:
            event = self.up.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            if isinstance(event, Response):
                self.status = event.status
                self.received = 0
                out += self.down.send(Response(event.status, event.headers, reason=event.reason))
            elif isinstance(event, Data):
                self.received += len(event.data)
                out += self.down.send(event)
            elif isinstance(event, EndOfMessage):
                out += self.down.send(event)
                self.audit(self.calls.popleft(), self.status, self.received)
                if self.transport is not None and out:
                    self.transport.write(out)
                out = b""
                if not (_reusable(self.up) and _reusable(self.down)):  # e.g. Connection: close
                    if self.transport is not None:
                        self.transport.close()
                    return
                self.up.start_next_cycle()
                self.down.start_next_cycle()
                self.drive_requests()  # a pipelined request may wait in the buffer
            else:
                break
        if out and self.transport is not None:
            self.transport.write(out)


def _reusable(connection: Connection) -> bool:
    return all(state is State.DONE for state in connection.states.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_relay_options(parser)
    parser.add_argument("--events", required=True, help="append the events' JSON lines here")
    parser.add_argument(
        "--parser", choices=("httptools", "core"), default="httptools", help="see CoreHalf"
    )
    args = parser.parse_args(argv)
    sink = Sink(args.events)
    direction = "inbound" if args.server_cert else "outbound"
    half = CoreHalf if args.parser == "core" else AuditedHalf
    try:
        uvloop.run(
            serve(
                args,
                lambda: half(sink, direction, downstream=True),
                lambda: half(sink, direction, downstream=False),
            )
        )
    finally:
        sink.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
