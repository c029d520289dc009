"""The HTTP/1.1 proxy loop: one downstream connection, requests relayed to a pooled upstream.

I/O only: framing decisions come from the sans-IO `http1.Connection` on each side, the
audit event from `record.to_event`. Bodies stream in both directions at once (so
`Expect: 100-continue` works: the upstream's 100 is relayed before the body flows), a
`101 Switching Protocols` turns the connection into a byte relay audited as one long
call, and failures answer like Envoy (503 upstream connect error, 504 timeout, 408 header
timeout, 403 `RBAC: access denied`) with the response flag in the audit event. An
idempotent request without content that loses a reused upstream connection before any
response byte is sent once more on a new connection (the event describes that last attempt).
A kept-alive downstream connection may idle for `idle_timeout_s` before its next request
begins; every request head then has `header_timeout_s` to arrive. A listener shared by several
services routes each request by its Host header; a host it does not serve is answered 404
with Envoy's NR (no route) flag, like a request that matches no virtual host. An exchange
still streaming when an SVID of either connection, or its CA, expires is cut then, as a tunnel
is (RFC 5280 §6.1.3 (a)(2)).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from auditmesh.events import AuditEvent, Authz, Peer, new_event_id, random_bytes
from auditmesh.proxy import headers as h
from auditmesh.proxy.accept import PeerTLS
from auditmesh.proxy.config import Limits
from auditmesh.proxy.http1 import Connection, Role, State
from auditmesh.proxy.http1_events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    ProtocolError,
    Request,
    Response,
)
from auditmesh.proxy.http1_events import Limits as WireLimits
from auditmesh.proxy.paths import PathError, normalize
from auditmesh.proxy.pool import Pool, Upstream, relay_expiry
from auditmesh.proxy.record import FLAGS, BodyDigests, Exchange, peer_of, reached_at, to_event
from auditmesh.proxy.routing import origin_form
from auditmesh.proxy.tcp import Deadline, Expiry, relay
from auditmesh.proxy.tracing import continue_or_start
from auditmesh.proxy.xfcc import HEADER as XFCC
from auditmesh.proxy.xfcc import xfcc_value

CHUNK = 64 * 1024
# RFC 9110 §9.2.2: methods whose intended effect is the same however often they are sent
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
Authorize = Callable[[Request, Exchange], Authz | None]
Expired = Callable[[PeerTLS, tuple[str, int], int], AuditEvent | None]
"""The refusal (an `authn` event) of a request at Unix ns on a connection whose caller's
certificate or its CA expired since the handshake, or None when it is valid after all."""


_NOT_PROXIED = (
    "only a request for a path (/p) or an http(s) URL is proxied; not CONNECT, not another "
    "scheme (RFC 9112 §3.2)"
)


class SecureNamingError(Exception):
    """The upstream presented another SPIFFE ID than the one configured for the service."""


@dataclass(frozen=True, slots=True)
class Route:
    direction: str  # "inbound": peers → local app; "outbound": local app → a service
    local: Peer  # this workload
    target: Peer  # inbound: the app; outbound: the destination service
    reporter: str  # this sidecar's SPIFFE ID
    pool: Pool
    limits: Limits
    authorize: Authorize | None = None
    body_digests: bool = False  # keep each body's SHA-256, never its bytes (DESIGN.md)


SelectRoute = Callable[[str | None], "Route | None"]
"""The route for a request's Host header value (None: the header is absent), or None."""


class _Closed(Exception):
    """The peer went away (EOF or reset) in the middle of a message."""


async def _next_event(
    conn: Connection, reader: asyncio.StreamReader, timeout: float | None
) -> object:
    event = conn.next_event()
    if event is not NEED_DATA:  # already parsed: no timer, no await (most events)
        return event
    if timeout is None:
        return await _receive(conn, reader)
    async with asyncio.timeout(timeout):
        return await _receive(conn, reader)


async def _receive(conn: Connection, reader: asyncio.StreamReader) -> object:
    while True:
        await _read_into(conn, reader)
        event = conn.next_event()
        if event is not NEED_DATA:
            return event


async def _read_into(conn: Connection, reader: asyncio.StreamReader) -> None:
    try:
        data = await reader.read(CHUNK)
    except (ConnectionError, OSError) as exc:
        raise _Closed(str(exc)) from None
    conn.receive_data(data)


async def _idle(conn: Connection, reader: asyncio.StreamReader, timeout: float) -> None:
    """Between kept-alive requests: wait up to `timeout` for the next request to begin (its
    first bytes, or EOF); none when pipelined bytes are already here."""
    rest, eof = conn.trailing_data
    if rest or eof:
        return
    async with asyncio.timeout(timeout):
        await _read_into(conn, reader)


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if data:
        writer.write(data)


def _random_hex(n: int) -> str:
    return random_bytes(n).hex()


class InFlight:
    """How many calls are in progress, as a context manager around each; `idle` is set while
    there are none, so a stopping sidecar can wait for them (connections idle between
    requests do not count)."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self.idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()


class HttpProxy:
    def __init__(
        self,
        route: Route,
        emit: Callable[[AuditEvent], None],
        *,
        select: SelectRoute | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        calls: InFlight | None = None,
        expired: Expired | None = None,
    ) -> None:
        """`route` serves every request; with `select`, it is the listener's own (direction,
        limits, the peer named before a request is read) and each request goes where
        `select(host)` says. `calls` counts the requests in progress (a stopping sidecar
        lets them finish). `expired` refuses a request whose caller's certificate expired."""
        self.route = route
        self._select = select
        self._expired = expired
        self._emit = emit
        self._now_ns = now_ns
        self._calls = calls if calls is not None else InFlight()
        limits = route.limits
        self._wire = WireLimits(
            max_header_bytes=limits.max_header_bytes, max_headers=limits.max_headers
        )

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerTLS | None,
        remote: tuple[str, int],
    ) -> None:
        down = Connection(Role.SERVER, limits=self._wire)
        limits = self.route.limits
        local, caller = self.route.local, self.route.target
        if self.route.direction == "inbound":
            local = reached_at(local, writer.get_extra_info("sockname"))
            caller = peer_of(peer, remote)
        first = True
        try:
            while True:
                if not first:
                    try:
                        await _idle(down, reader, limits.idle_timeout_s)
                    except (TimeoutError, _Closed):
                        return  # an idle connection ends without a word
                # the head, from its first byte on (slowloris protection for every request)
                waited_from = self._now_ns()
                try:
                    event = await _next_event(down, reader, limits.header_timeout_s)
                except TimeoutError:
                    if first or down.trailing_data[0]:  # a head was started: slowloris
                        x = self._exchange(waited_from, peer, local, caller)
                        self._fail(x, "SI", "request headers not received in time", 408)
                        await self._answer(down, writer, x)
                        self._emit(to_event(x, self._now_ns()))
                    return
                except ProtocolError as refused:
                    x = self._exchange(waited_from, peer, local, caller)
                    self._fail(x, "DPE", refused.reason, refused.status_hint)
                    await self._answer(down, writer, x)
                    self._emit(to_event(x, self._now_ns()))
                    return
                except _Closed:
                    return
                if not isinstance(event, Request):
                    return  # ConnectionClosed, or PAUSED after an earlier switch
                # the call starts when its request arrives, not when the idle wait began
                start_ns = self._now_ns()
                if peer is not None and start_ns > peer.valid_until_ns and self._expired:
                    # RFC 5280 §6.1.3 (a)(2): the caller's SVID is valid at each request, not
                    # only at the handshake; refused as the handshake would be now
                    refusal = self._expired(peer, remote, start_ns)
                    if refusal is not None:
                        self._emit(refusal)
                        return
                x = self._exchange(start_ns, peer, local, caller)
                try:
                    with self._calls:
                        keep = await self._one(down, reader, writer, event, x)
                except (ProtocolError, ConnectionError, OSError) as exc:
                    # whatever broke, the call happened and is audited
                    if x.flag is None:
                        x.flag, x.detail = "DC", f"downstream connection failed: {exc}"
                    keep = False
                except asyncio.CancelledError:  # the sidecar stopped before the call ended
                    x.flag, x.detail = "DC", "the sidecar stopped during the call"
                    self._emit(to_event(x, self._now_ns()))
                    raise
                self._emit(to_event(x, self._now_ns()))
                if not keep or not down.keep_alive or down.our_state is not State.DONE:
                    return
                down.start_next_cycle()
                first = False
        finally:
            writer.close()

    def _exchange(self, start_ns: int, peer: PeerTLS | None, local: Peer, remote: Peer) -> Exchange:
        route = self.route
        return Exchange(
            event_id=new_event_id(lambda: start_ns),
            start_ns=start_ns,
            reporter=route.reporter,
            kind="http",
            direction=route.direction,
            local=local,
            remote=remote,
            tls=peer,
            digests=BodyDigests() if route.body_digests else None,
        )

    def _fail(self, x: Exchange, flag: str, detail: str, status: int | None = None) -> None:
        x.flag = flag
        x.detail = detail
        x.status = status if status is not None else FLAGS[flag][1] or None

    async def _answer(self, down: Connection, writer: asyncio.StreamWriter, x: Exchange) -> None:
        """A response of our own (error or denial) and the end of the connection."""
        status = x.status or 500
        body = b"RBAC: access denied" if x.flag == "RBAC" else (x.detail.encode() or b"error")
        if x.flag == "UF":
            body = b"upstream connect error or disconnect/reset before headers. " + body
        try:
            _write(
                writer,
                down.send(
                    Response(
                        status,
                        (
                            (b"content-type", b"text/plain"),
                            (b"content-length", b"%d" % len(body)),
                            (b"connection", b"close"),
                        ),
                    )
                )
                + down.send(Data(body))
                + down.send(EndOfMessage()),
            )
            await writer.drain()
        except (ProtocolError, ConnectionError, OSError):
            pass  # the downstream is gone or already answered: the event says what happened
        x.response_bytes = len(body)

    def _upstream_request(self, request: Request, x: Exchange) -> Request:
        fields = request.headers
        kept = h.strip_hop_by_hop(fields)
        # re-declare the framing: RFC 9110 §7.6.1 removes a Content-Length that Connection
        # names too, and the body still goes (the parser allows one of the two, RFC 9112 §6.3)
        if b"chunked" in h.header_tokens(fields, b"transfer-encoding"):
            kept = (*kept, (b"transfer-encoding", b"chunked"))
        else:
            length = h.get_header(fields, b"content-length")  # one value (http1 collapses)
            if length is not None and h.get_header(kept, b"content-length") is None:
                kept = (*kept, (b"content-length", length))
        if (
            request.http_version == b"1.1"
            and b"websocket" in h.header_tokens(fields, b"upgrade")
            and b"upgrade" in h.header_tokens(fields, b"connection")
        ):
            # RFC 9110 §7.8: the proxy forwards the upgrade offer; WebSocket's only, as Istio
            # configures Envoy: after an h2c upgrade, requests would pass unseen by policy.
            # An offer needs the "upgrade" connection option: an Upgrade field without it
            # was not meant for this hop (and the core would refuse to relay the app's 101)
            kept = (*kept, (b"connection", b"upgrade"), (b"upgrade", b"websocket"))
        if h.get_header(kept, b"host") is None:
            # RFC 9112 §3.2: an HTTP/1.1 request has one Host, the authority policy and the
            # event saw, empty when there is none (HTTP/1.0); RFC 9110 §7.6.1 removed a Host
            # that Connection names
            kept = (*kept, (b"host", (x.host or "").encode("latin-1")))
        span = continue_or_start(_text(h.get_header(fields, b"traceparent")), _random_hex)
        x.trace_id, x.span_id, x.parent_span_id = span.trace_id, span.span_id, span.parent_span_id
        kept = h.set_header(kept, b"traceparent", span.traceparent.encode())
        request_id = _text(h.get_header(fields, b"x-request-id"))
        if not request_id:
            request_id = x.event_id
            kept = h.set_header(kept, b"x-request-id", request_id.encode())
        x.request_id = request_id
        if self.route.direction == "inbound":
            kept = h.remove_headers(kept, (XFCC,))  # never trust one from outside
            if x.tls is not None:
                value = xfcc_value(self.route.reporter, x.tls.cert_sha256, str(x.tls.spiffe_id))
                kept = (*kept, (XFCC, value))
        return Request(request.method, request.target, kept)

    async def _one(
        self,
        down: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        x: Exchange,
    ) -> bool:
        absolute = origin_form(request.target.decode("latin-1"))
        if absolute is not None:  # RFC 9112 §3.2.2: as `GET /p` with Host from the target
            named, origin = absolute
            fields = h.set_header(request.headers, b"host", named.encode("latin-1"))
            request = Request(request.method, origin.encode("latin-1"), fields)
        x.method = request.method.decode("latin-1")
        x.path = request.target.decode("latin-1")
        x.host = _text(h.get_header(request.headers, b"host"))
        x.user_agent = _text(h.get_header(request.headers, b"user-agent"))
        if request.method == b"CONNECT" or not x.path.startswith("/") and x.path != "*":
            # a tunnel, or a target in another scheme (ws://…), would carry requests past
            # policy and audit: refused, like Envoy without a CONNECT or upgrade config
            self._fail(x, "DPE", _NOT_PROXIED, 400)
            await self._answer(down, writer, x)
            return False
        try:
            normal = normalize(x.path)  # what policies, the event and the app see: paths.py
        except PathError as exc:
            self._fail(x, "DPE", str(exc), 400)
            await self._answer(down, writer, x)
            return False
        if normal != x.path:
            x.original_path, x.path = x.path, normal
            request = Request(request.method, normal.encode("latin-1"), request.headers)
        outgoing = self._upstream_request(request, x)  # trace and request ids, also for NR
        route = self.route
        if self._select is not None:
            chosen = self._select(x.host)
            if chosen is None:
                x.remote = Peer(host=x.host)  # clipped with the event's other wire values
                self._fail(x, "NR", f"no route: this listener serves no service named {x.host!r}")
                await self._answer(down, writer, x)
                return False
            route, x.remote = chosen, chosen.target
        if route.authorize is not None:
            # the request as the app will get it (Envoy's RBAC runs after the connection
            # manager set x-request-id and x-forwarded-client-cert): a condition on XFCC sees
            # the sidecar's, never one the caller made up and the app would not see
            x.authz = route.authorize(outgoing, x)
            if x.authz is not None and x.authz.decision == "deny":
                self._fail(x, "RBAC", "RBAC: access denied")
                await self._answer(down, writer, x)
                return False
        body = down.next_event()  # EndOfMessage at once: a request without content
        # RFC 9112 §9.3.1: a connection can close at any time, and a pooled one the upstream
        # closed while idle fails the next request sent on it. Such a request is sent again,
        # once, on a new connection when nothing of a response came back, its method is
        # idempotent (RFC 9110 §9.2.2) and it has no content (a body is streamed, not kept).
        replayable = isinstance(body, EndOfMessage) and request.method in IDEMPOTENT
        upstream = await self._connect(route.pool, down, writer, x)
        if upstream is None:
            return False
        replay = replayable and upstream.reused
        hop = h.hop_by_hop(request.headers)  # not forwarded as trailers either
        pool, timeout_s = route.pool, route.limits.request_timeout_s
        cut: tuple[Expiry, Deadline] | None = None
        try:
            async with asyncio.timeout(timeout_s) as timer:
                ends_ns = self._now_ns() + int(timeout_s * 1e9)
                while True:
                    cut = self._cut_at_expiry(timer, x, upstream, ends_ns)
                    try:
                        outcome = await self._relay(
                            pool, down, reader, writer, upstream, outgoing, x, body, replay, hop
                        )
                    finally:
                        if cut is not None:
                            cut[1].cancel()
                    if outcome != "retry":
                        break
                    x.labels["upstream.attempts"] = "2"
                    again = await self._connect(pool, down, writer, x, fresh=True)
                    if again is None:
                        return False
                    upstream, replay = again, False
        except TimeoutError:
            upstream.close()
            if cut is not None and cut[1].passed.done():
                # cut as a relay is, closing both sides; the expiry is why it ended
                expiry = cut[0]
                x.flag, x.end, x.detail = None, expiry.end, expiry.detail
            elif x.status is None:
                self._fail(x, "UT", "upstream request timeout")
                await self._answer(down, writer, x)
            else:
                x.flag, x.detail = "UT", "upstream request timeout"
            return False
        if outcome == "switched":  # a tunnel lives as long as both ends want it
            await self._tunnel(down, reader, writer, up_of(upstream), upstream, x)
            return False
        return outcome == "keep"

    def _cut_at_expiry(
        self, timer: asyncio.Timeout, x: Exchange, upstream: Upstream, ends_ns: int
    ) -> tuple[Expiry, Deadline] | None:
        """RFC 5280 §6.1.3 (a)(2): an exchange still streaming when an SVID it was
        authenticated with (or its CA) expires is cut then, as a relay is (`relay_expiry`):
        the request timeout `timer` fires early. A timer of its own only when that comes
        before the request timeout's end `ends_ns` (Unix ns), which is rare."""
        caller = x.tls  # upstream.until_ns holds the server's SVID and this sidecar's own
        until_ns = (
            upstream.until_ns if caller is None else min(caller.valid_until_ns, upstream.until_ns)
        )
        if until_ns >= ends_ns:
            return None
        if until_ns <= self._now_ns():
            # Passed already, yet the request was let through: its SVIDs validated in full
            # just now (the per-request re-check), along a path that outlives this date.
            return None
        expiry = relay_expiry(caller, upstream)
        if expiry is None:
            return None
        loop = asyncio.get_running_loop()

        def fire() -> None:
            if not timer.expired():
                timer.reschedule(loop.time())

        return expiry, Deadline(expiry.until_ns, self._now_ns, fire)

    async def _connect(
        self,
        pool: Pool,
        down: Connection,
        writer: asyncio.StreamWriter,
        x: Exchange,
        *,
        fresh: bool = False,
    ) -> Upstream | None:
        """A connection from `pool` (`fresh`: a new one); None when none could be had,
        which is then answered and recorded in `x`."""
        try:
            upstream = await pool.acquire(fresh=fresh)
        except SecureNamingError as mismatch:
            self._fail(x, "SNM", str(mismatch))
        except (OSError, TimeoutError) as exc:
            self._fail(x, "UF", f"reset reason: connection failure ({exc or 'timeout'})")
        else:
            x.connected_to(upstream.tls)
            return upstream
        x.connected_to(None)  # a retry's connect failed: the first connection is not this call's
        await self._answer(down, writer, x)
        return None

    async def _relay(
        self,
        pool: Pool,
        down: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: Upstream,
        outgoing: Request,
        x: Exchange,
        first: object,
        replay: bool,
        hop: frozenset[bytes],
    ) -> str:
        """Relay one request/response, the request body from `first` (the event after the
        head) on; "keep" (reusable), "close", "switched" (101), or, only when `replay`,
        "retry": the connection was lost before any response byte and nothing was answered.
        `hop`: the request's hop-by-hop field names, kept out of its trailers."""
        up = Connection(Role.CLIENT, limits=self._wire)
        upstream.http = up
        request_task: asyncio.Future[bool] | None = None
        if isinstance(first, EndOfMessage):  # no body (most requests): no task needed
            upstream.writer.write(up.send(outgoing) + up.send(_end(first, hop)))
        else:
            upstream.writer.write(up.send(outgoing))
            request_task = asyncio.ensure_future(
                self._pump_request(down, reader, up, upstream, x, first, hop)
            )
        try:
            outcome = await self._pump_response(down, writer, up, upstream, x, replay)
        except BaseException:
            if request_task is not None:
                request_task.cancel()
            upstream.close()
            raise
        if outcome == "retry":  # replay: no request body, so no request task
            upstream.close()
            return outcome
        if outcome != "done" and request_task is not None:
            if outcome != "switched":
                request_task.cancel()
            await asyncio.gather(request_task, return_exceptions=True)
        if outcome == "switched":
            return "switched"
        if outcome != "done":
            upstream.close()
            return "close"
        clean = True
        if request_task is not None:
            # gather's result is a list at run time (typeshed: a tuple), so it is not kept
            await asyncio.gather(request_task, return_exceptions=True)
            clean = (
                not request_task.cancelled()
                and request_task.exception() is None
                and request_task.result() is True
            )
        # bytes after the response were not asked for: the connection cannot be trusted. Nor
        # when content a broken app sent after a head that ends its response may still be on
        # its way (`_content_may_follow`): it would be read as the next caller's response
        if (
            clean
            and not upstream.content_may_follow
            and up.keep_alive
            and up.states[Role.SERVER] is State.DONE
            and not up.trailing_data[0]
        ):
            up.start_next_cycle()
            pool.release(upstream)
        else:
            upstream.close()
        return "keep" if clean else "close"

    async def _pump_request(
        self,
        down: Connection,
        reader: asyncio.StreamReader,
        up: Connection,
        upstream: Upstream,
        x: Exchange,
        event: object,
        hop: frozenset[bytes],
    ) -> bool:
        """Downstream body → upstream, from `event` on. True when the whole request went."""
        while True:
            if event is NEED_DATA:
                try:
                    event = await _next_event(down, reader, None)
                except _Closed:
                    event = ConnectionClosed()
                except ProtocolError as exc:
                    if down.trailing_data[1]:  # the caller hung up before the body's end
                        event = ConnectionClosed()
                    else:  # a malformed body: the caller's fault, 400
                        x.flag, x.detail = "DPE", exc.reason
                        upstream.close()  # the app waits for the rest: end its wait now
                        return False
            if event is PAUSED:
                return True
            if isinstance(event, Data):
                x.request_bytes += len(event.data)
                if x.digests is not None:
                    x.digests.request.add(event.data)
                upstream.writer.write(up.send(event))
                await upstream.writer.drain()
            elif isinstance(event, EndOfMessage):
                upstream.writer.write(up.send(_end(event, hop)))
                await upstream.writer.drain()
                return True
            elif isinstance(event, ConnectionClosed):
                if x.status is None:
                    x.flag, x.detail = "DC", "downstream closed before the request ended"
                    upstream.close()  # nobody is left to answer: end the app's wait now
                return False
            event = NEED_DATA

    async def _pump_response(
        self,
        down: Connection,
        writer: asyncio.StreamWriter,
        up: Connection,
        upstream: Upstream,
        x: Exchange,
        replay: bool,
    ) -> str:
        """Upstream response → downstream: "done", "switched", "failed", or "retry" (`replay`
        and the connection was lost before any response byte).

        The response head is held back while the body that follows it is already parsed, so
        a small response leaves in one write (one TLS record, one send) rather than two."""
        head = b""
        hop = h.HOP_BY_HOP  # the response's, once its head is here
        while True:
            try:
                event: object = up.next_event()
                if event is NEED_DATA:
                    if head:  # nothing more to go with it yet
                        _write(writer, head)
                        head = b""
                    event = await _next_event(up, upstream.reader, None)
            except _Closed as closed:
                _write(writer, head)
                return await self._upstream_lost(down, writer, up, x, str(closed), replay)
            except ProtocolError as exc:
                _write(writer, head)
                if x.status is None and up.trailing_data == (b"", True):
                    # EOF where a response should start: a closed connection, not a bad message
                    return await self._upstream_lost(down, writer, up, x, "upstream closed", replay)
                if x.status is None:
                    self._fail(x, "UPE", exc.reason)
                    await self._answer(down, writer, x)
                else:  # the head went out: the response was cut short (Envoy's UC)
                    x.flag, x.detail = "UC", f"the upstream response ended early: {exc.reason}"
                return "failed"
            if isinstance(event, ConnectionClosed) or event is PAUSED and x.status is None:
                _write(writer, head)
                return await self._upstream_lost(down, writer, up, x, "upstream closed", replay)
            try:
                if isinstance(event, InformationalResponse):
                    replay = False  # relayed downstream: this attempt has answered
                    _write(writer, down.send(_interim(event)))
                    if event.status == 101:
                        x.status = 101
                        await writer.drain()
                        return "switched"
                elif isinstance(event, Response):
                    x.status = event.status
                    upstream.content_may_follow = _content_may_follow(up.request_method, event)
                    hop = h.hop_by_hop(event.headers)
                    response = Response(
                        event.status, h.strip_hop_by_hop(event.headers), reason=event.reason
                    )
                    head = down.send(response)
                elif isinstance(event, Data):
                    x.response_bytes += len(event.data)
                    if x.digests is not None:
                        x.digests.response.add(event.data)
                    _write(writer, head + down.send(event))
                    head = b""
                    await writer.drain()
                elif isinstance(event, EndOfMessage):
                    if event.trailers and down.their_http_version != b"1.1":
                        event = EndOfMessage()  # an HTTP/1.0 client has no framing for them
                    _write(writer, head + down.send(_end(event, hop)))
                    await writer.drain()
                    return "done"
            except (ConnectionError, OSError):
                x.flag, x.detail = "DC", "downstream disconnected during the response"
                return "failed"

    async def _upstream_lost(
        self,
        down: Connection,
        writer: asyncio.StreamWriter,
        up: Connection,
        x: Exchange,
        why: str,
        replay: bool,
    ) -> str:
        if x.status is None and x.flag in ("DC", "DPE"):  # the request side ended it
            if x.flag == "DPE":
                x.status = FLAGS["DPE"][1]
                await self._answer(down, writer, x)
        elif x.status is None:
            if replay and not up.trailing_data[0]:
                return "retry"  # not one byte of a response: the request may go again
            self._fail(x, "UR", f"upstream reset before the response: {why}")
            await self._answer(down, writer, x)
        else:
            x.flag, x.detail = "UC", f"upstream closed during the response: {why}"
        return "failed"

    async def _tunnel(
        self,
        down: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: Connection,
        upstream: Upstream,
        x: Exchange,
    ) -> None:
        """After 101: raw bytes both ways until both sides are done (one audit event), or
        until an SVID of either connection, or its CA, expires (RFC 5280 §6.1.3 (a)(2))."""
        down_rest, _ = down.trailing_data
        up_rest, _ = up.trailing_data
        if down_rest:
            upstream.writer.write(down_rest)
        if up_rest:
            writer.write(up_rest)
        tally = [x.request_bytes, x.response_bytes]
        try:
            result = await relay(
                (reader, writer),
                (upstream.reader, upstream.writer),
                idle_timeout_s=self.route.limits.idle_timeout_s,
                already_sent=x.request_bytes + len(down_rest),
                already_received=x.response_bytes + len(up_rest),
                tally=tally,
                expiry=relay_expiry(x.tls, upstream),
                now_ns=self._now_ns,
            )
        except asyncio.CancelledError:  # the sidecar stopped: the event keeps the bytes so far
            x.request_bytes, x.response_bytes = tally
            x.labels["upgrade"] = "websocket"
            upstream.close()
            raise
        x.relayed(result)  # as in TCP mode: a reset, or a cut at an expiry, is a failure
        x.labels["upgrade"] = "websocket"
        upstream.close()


# RFC 9110 §6.5.1: fields a sender MUST NOT put in trailers (framing, routing, request
# modifiers, authentication, how to process the content); an app that merges trailers into
# its headers would take them as the caller's. And the inbound sidecar's own identity
# header, which the app must only ever get from it (as in the request's header section).
NOT_IN_TRAILERS = frozenset(
    (
        b"content-length", b"transfer-encoding", b"trailer", b"te", b"host",
        b"content-encoding", b"content-type", b"content-range", b"authorization",
        b"proxy-authorization", b"cookie", b"set-cookie", XFCC,
    )
)  # fmt: skip


def _end(event: EndOfMessage, hop: frozenset[bytes]) -> EndOfMessage:
    """The end of a message as forwarded: RFC 9110 §7.6.1 removes "any header or trailer
    field(s)" a Connection option names (and the fixed hop-by-hop ones) before forwarding,
    and the fields no trailer may carry (`NOT_IN_TRAILERS`) are dropped."""
    if not event.trailers:
        return event
    return EndOfMessage(h.remove_headers(event.trailers, hop | NOT_IN_TRAILERS))


def _interim(event: InformationalResponse) -> InformationalResponse:
    """A 1xx as forwarded: without its hop-by-hop fields (RFC 9110 §7.6.1), but a 101 keeps
    the protocol it switches to (RFC 9110 §7.8: Upgrade, with the "upgrade" option)."""
    fields = h.strip_hop_by_hop(event.headers)
    if event.status == 101:
        protocols = h.get_header(event.headers, b"upgrade")
        if protocols is not None:
            fields = (*fields, (b"connection", b"upgrade"), (b"upgrade", protocols))
    return InformationalResponse(event.status, fields)


def _content_may_follow(method: bytes | None, response: Response) -> bool:
    """RFC 9112 §6.3 rule 1: a response to HEAD, a 204 or a 304 ends at its header section
    whatever its framing fields say, so content a broken app sends anyway arrives after it.
    After HEAD the fields describe a GET's content (RFC 9110 §9.3.2), so always; after a 204
    or 304 when they announce content (RFC 9110 §8.6 forbids it in a 204, allows a 304 the
    200's Content-Length): without them, the connection is pooled as after any response."""
    if method == b"HEAD":
        return True
    if response.status != 204 and response.status != 304:
        return False
    fields = response.headers
    length = h.get_header(fields, b"content-length")
    return h.get_header(fields, b"transfer-encoding") is not None or length not in (None, b"0")


def up_of(upstream: Upstream) -> Connection:
    assert upstream.http is not None, "an upstream in use has its exchange's connection"
    return upstream.http


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
