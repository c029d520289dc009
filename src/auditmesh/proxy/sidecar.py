"""`auditmesh sidecar`: the listeners of one workload's proxy, wired to identity and audit.

Inbound: peers connect with mTLS (per the PeerAuthentication mode); requests go to the
local app. Outbound: the local app connects in plaintext to a local port per upstream
service, or to one port several HTTP services share (routed by Host, proxy/routing.py);
the sidecar originates mTLS and checks that the server's SPIFFE ID is the one
configured for that service (secure naming). Every request (HTTP) or connection (TCP),
and every refused handshake, is an audit event handed to the emitter. A rotated SVID is
used for new connections only; open ones keep theirs until it expires (RFC 5280 §6.1.3
(a)(2)): then a request there is refused like a handshake with it, a pooled upstream
connection is dialled again, and a byte relay (TCP, a tunnel) or an HTTP exchange still
streaming is cut, as when the peer's SVID expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

from auditmesh.events import TLS, AuditEvent, Authz, Error, Peer, new_event_id
from auditmesh.identity.agent import IdentityAgent
from auditmesh.identity.server_tls import server_client
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import PeerIdentityError, PresentedCertificate, verify_peer_svid
from auditmesh.identity.workload import Credentials
from auditmesh.policy.request import Request as PolicyRequest
from auditmesh.proxy.accept import HandshakeRefused, NothingSent, PeerTLS, accept, recheck
from auditmesh.proxy.config import (
    ConfigError,
    Inbound,
    Outbound,
    SidecarConfig,
    outbound_listeners,
    split_host_port,
)
from auditmesh.proxy.emitter import Emitter, EmitterConfig
from auditmesh.proxy.enforce import PolicyState
from auditmesh.proxy.http1_events import Request
from auditmesh.proxy.http_proxy import HttpProxy, InFlight, Route, SecureNamingError
from auditmesh.proxy.pool import Pool, Upstream, relay_expiry
from auditmesh.proxy.record import Exchange, peer_of, reached_at, to_event
from auditmesh.proxy.routing import by_host, service_names
from auditmesh.proxy.spool import Spool, SpoolConfig
from auditmesh.proxy.tcp import relay

STREAM_LIMIT = 256 * 1024


DRAIN_S = 5.0  # on stop, how long calls in progress may take to finish (Istio's default)
ACCEPT_RETRY_S = 0.1  # out of file descriptors: accept again once open calls may have ended


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        base_dir: Path,
        *,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        # what the workload's namespace is, once its identity is known (`_resolve_namespace`)
        self.namespace = config.workload.namespace or "default"
        self.base_dir = base_dir
        self.policy: PolicyState | None = None
        self.data_dir = base_dir / config.data_dir
        self.bundle = read_bundle(base_dir / config.server.bundle)
        self._now_ns = now_ns
        self.agent = IdentityAgent(self.data_dir, config.server.url, self.bundle)
        self._token = config.server.join_token
        if config.server.join_token_file:
            token_file = base_dir / config.server.join_token_file
            try:
                self._token = token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not text"
                raise ConfigError(
                    f"server.join_token_file: cannot read {token_file}: {reason}"
                ) from None
        self._server_ctx: dict[bool, ssl.SSLContext] = {}  # require client cert → context
        self._client_ctx: ssl.SSLContext | None = None
        self._client_until_ns = 0  # when the SVID that context presents expires (Unix ns)
        self.emitter: Emitter | None = None
        self.identity: SpiffeId | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []  # the inbound accept loops
        self._in_flight = InFlight()  # calls in progress, which a stop lets finish
        self._pools: list[Pool] = []
        self.ready = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        # Whatever can fail is tried before the one-time join token is spent: the listen
        # addresses are bound now (and listened on once the sidecar serves), and the spool
        # is opened (its directory locked, a crashed or damaged one recovered).
        bound = bind_listeners(self.config)
        spool: Spool | None = None
        try:
            audit = self.config.audit
            spool = Spool(
                self.data_dir / "spool",
                SpoolConfig(max_bytes=audit.spool_max_bytes, when_full=audit.spool_full),
            )
            await self._serve(stop, bound, spool)
        finally:
            if spool is not None and self.emitter is None:  # else the emitter closed it
                spool.close()
            for sockets in bound.values():
                for sock in sockets:
                    sock.close()

    async def _serve(
        self, stop: asyncio.Event, bound: dict[str, list[socket.socket]], spool: Spool
    ) -> None:
        credentials = await self.agent.start(self._token)
        self.namespace = self._resolve_namespace(credentials.spiffe_id)
        self._use(credentials)
        self.agent.subscribe(self._rotate)
        audit = self.config.audit
        self.emitter = Emitter(
            self._server_client(credentials),
            self.data_dir,
            reporter=str(credentials.spiffe_id),
            config=EmitterConfig(
                max_batch_events=audit.batch_size, flush_interval_s=audit.flush_ms / 1000
            ),
            spool=spool,
        )
        self.emitter.start()
        renewals = asyncio.ensure_future(self.agent.run_renewals())
        try:
            if self.config.policies is not None:
                self._start_policies(Path(self.config.policies))
            if self.config.inbound is not None:
                await self._listen_inbound(self.config.inbound, bound[self.config.inbound.listen])
            for listen, targets in outbound_listeners(self.config.outbound).items():
                await self._listen_outbound(listen, targets, bound[listen])
            self.ready.set()
            await stop.wait()
        finally:
            renewals.cancel()
            for server in self._servers:  # no new calls; those in progress may finish
                server.close()
            for task in self._accepting:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._in_flight.idle.wait(), DRAIN_S)
            for task in list(self._tasks):  # each call cut short here is audited as such
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for pool in self._pools:
                pool.close()
            await self.emitter.close()

    def _resolve_namespace(self, identity: SpiffeId) -> str:
        """The workload's namespace: the configured one, else the identity's, else "default".
        Istio derives both from the pod's namespace, so they never differ there: here a
        mismatch would record one namespace beside an identity in another, and choose the
        policies of the wrong one."""
        namespace = self.config.workload.namespace
        if namespace is None:
            return identity.namespace or "default"
        if identity.namespace is not None and identity.namespace != namespace:
            raise ConfigError(
                f"workload.namespace is {namespace}, but this sidecar's identity {identity} "
                f"is in namespace {identity.namespace}: set workload.namespace: "
                f"{identity.namespace} (or use a join token minted for the namespace meant). "
                f"The identity is kept in {self.data_dir}: no new join token is needed to "
                "start again with the namespace corrected"
            )
        return namespace

    def _use(self, credentials: Credentials) -> None:
        self._server_ctx = {
            # accept() validates the client's chain, time included, right after the handshake
            required: credentials.server_context(
                require_client_cert=required, defer_time_check=True
            )
            for required in (True, False)
        }
        self._client_ctx = credentials.client_context()
        self._client_until_ns = int(credentials.not_after.timestamp()) * 1_000_000_000
        self.identity = credentials.spiffe_id

    def _mode(self, inbound: Inbound) -> str:
        """PeerAuthentication decides when one applies; else the config's `mtls`."""
        current = None if self.policy is None else self.policy.current
        if current is not None and current.mtls_mode is not None:
            return current.mtls_mode
        return inbound.mtls

    def _rotate(self, credentials: Credentials) -> None:
        self._use(credentials)  # new connections only; open ones keep their session
        if self.emitter is not None:
            old = self.emitter.replace_client(self._server_client(credentials))
            asyncio.ensure_future(old.aclose())

    def _server_client(self, credentials: Credentials) -> httpx.AsyncClient:
        return server_client(self.config.server.url, credentials.client_context(), self.bundle)

    def _start_policies(self, path: Path) -> None:
        assert self.identity is not None, "policies load once the identity is known"
        inbound = self.config.inbound
        self.policy = PolicyState(
            path if path.is_absolute() else self.base_dir / path,
            self.namespace,
            self.config.workload.labels,
            port=None if inbound is None else split_host_port(inbound.listen)[1],
            trust_domain=self.identity.trust_domain,
            reporter=lambda: str(self.identity),
            local=lambda: self._local,
            now_ns=self._now_ns,
        )
        loaded = self.policy.load()
        self._emit(loaded)  # delivered on the way out if it is a refusal
        if self.policy.current is None:
            assert loaded.error is not None
            raise ConfigError(
                f"policies: {loaded.error.message}. The sidecar does not serve without its "
                "policy set: fix it and start again"
            )
        self._spawn(self._watch_policies(self.policy))

    async def _watch_policies(self, state: PolicyState) -> None:
        """Reload on change, for as long as the sidecar runs: no error ends the watch (the
        set in force stays, and each new failure is a `policy_change` failure event)."""
        last_error = None
        while True:
            await asyncio.sleep(self.config.policy_reload_s)
            try:
                # file reads and YAML parsing off the event loop: requests go on meanwhile
                if await asyncio.to_thread(state.changed):
                    self._emit(await asyncio.to_thread(state.load))
                last_error = None
            except Exception as exc:  # PolicyState reports its own failures; this is a defect
                reason = f"policy watch: unexpected {type(exc).__name__}: {exc}"
                if reason != last_error:
                    print(f"auditmesh sidecar: {reason}", flush=True)
                    with contextlib.suppress(Exception):
                        self._emit(state.refused(reason))
                last_error = reason

    def _decide(self, request: PolicyRequest) -> Authz | None:
        return None if self.policy is None else self.policy.decide(request)

    def _authorize_http(self, request: Request, x: Exchange) -> Authz | None:
        if self.policy is None:
            return None
        headers: dict[str, str | list[str]] = {}
        for name, value in request.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            previous = headers.get(key)
            if previous is None:
                headers[key] = text
            else:
                headers[key] = [*([previous] if isinstance(previous, str) else previous), text]
        return self._decide(self._policy_request(x, http=True, headers=headers))

    def _policy_request(
        self, x: Exchange, *, http: bool, headers: dict[str, str | list[str]] | None = None
    ) -> PolicyRequest:
        inbound = self.config.inbound
        return PolicyRequest.of(
            destination_namespace=self.namespace,
            destination_labels=self.config.workload.labels,
            source_principal=x.remote.identity,
            source_ip=x.remote.ip,
            destination_ip=x.local.ip,
            destination_port=None if inbound is None else split_host_port(inbound.listen)[1],
            http=http,
            method=x.method,
            path=x.path,
            host=x.host,
            headers=headers,
            sni=None if x.tls is None else x.tls.sni,
        )

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._track(task)
        return task

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event: AuditEvent) -> None:
        assert self.emitter is not None
        self.emitter.emit(event)

    @property
    def _local(self) -> Peer:
        workload = self.config.workload
        return Peer(
            identity=None if self.identity is None else str(self.identity),
            service=workload.name,
            namespace=self.namespace,
        )

    # -- inbound ---------------------------------------------------------------------

    def _listener_peer(self, inbound: Inbound) -> Peer:
        """This workload as its callers reach it: the event's destination ip and port."""
        host, port = split_host_port(inbound.listen)
        return msgspec.structs.replace(self._local, ip=host, port=port)

    async def _listen_inbound(self, inbound: Inbound, listeners: list[socket.socket]) -> None:
        app_host, app_port = split_host_port(inbound.app)
        limits = self.config.limits

        async def connect_app() -> Upstream:
            reader, writer = await asyncio.open_connection(app_host, app_port, limit=STREAM_LIMIT)
            return Upstream(reader, writer)

        pool = self._pool(connect_app)
        app = Peer(service=self.config.workload.name, ip=app_host, port=app_port)
        route = Route(
            "inbound",
            self._listener_peer(inbound),
            app,
            str(self.identity),
            pool,
            limits,
            self._authorize_http,
            self.config.audit.body_digests,
        )
        proxy = HttpProxy(
            route, self._emit, now_ns=self._now_ns, calls=self._in_flight, expired=self._expired
        )
        for listener in listeners:
            listener.listen(1024)
            self._accepting.append(
                self._spawn(self._accept_loop(listener, inbound, proxy, connect_app))
            )

    async def _accept_loop(
        self,
        listener: socket.socket,
        inbound: Inbound,
        proxy: HttpProxy,
        connect_app: Callable[[], Awaitable[Upstream]],
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    sock, _ = await loop.sock_accept(listener)
                except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: wait for calls to end
                    print(f"auditmesh sidecar: cannot accept a connection: {exc}", flush=True)
                    await asyncio.sleep(ACCEPT_RETRY_S)
                    continue
                self._spawn(self._inbound(sock, inbound, proxy, connect_app))
        finally:
            listener.close()

    async def _inbound(
        self,
        sock: socket.socket,
        inbound: Inbound,
        proxy: HttpProxy,
        connect_app: Callable[[], Awaitable[Upstream]],
    ) -> None:
        start_ns = self._now_ns()
        remote = sock.getpeername()[:2]  # before the handshake may close the socket
        local = sock.getsockname()
        try:
            mode = self._mode(inbound)
            accepted = await accept(
                sock,
                mode,
                lambda: self._server_ctx[mode == "STRICT"],
                self.bundle,
                handshake_timeout=self.config.limits.header_timeout_s,
            )
        except HandshakeRefused as exc:
            self._emit(self._authn_failure(start_ns, remote, exc))
            sock.close()
            return
        except NothingSent:
            sock.close()
            return
        if inbound.protocol == "http":
            await proxy.serve(accepted.reader, accepted.writer, accepted.peer, accepted.remote)
            return
        x = self._tcp_exchange(
            start_ns,
            "inbound",
            reached_at(self._listener_peer(inbound), local),
            peer_of(accepted.peer, accepted.remote),
        )
        x.tls = accepted.peer
        x.authz = self._decide(self._policy_request(x, http=False))
        if x.authz is not None and x.authz.decision == "deny":
            x.flag, x.detail, x.end = "RBAC", "RBAC: access denied", "denied"
            accepted.writer.close()
            self._emit(to_event(x, self._now_ns()))
            return
        await self._tcp(accepted.reader, accepted.writer, connect_app, x)

    def _expired(self, peer: PeerTLS, remote: tuple[str, int], now_ns: int) -> AuditEvent | None:
        refused = recheck(peer, self.bundle, now_ns)
        return None if refused is None else self._authn_failure(now_ns, remote, refused)

    def _authn_failure(
        self, start_ns: int, remote: tuple[str, int], exc: HandshakeRefused
    ) -> AuditEvent:
        ip, port = remote
        presented = exc.presented
        return AuditEvent(
            id=new_event_id(lambda: start_ns),
            time_ns=start_ns,
            duration_us=(self._now_ns() - start_ns) // 1000,
            reporter=str(self.identity),
            kind="authn",
            direction="inbound",
            source=Peer(ip=ip, port=port),
            destination=self._local,
            tls=None
            if presented is None
            else TLS(
                mutual=False,
                version=exc.version,
                peer_cert_sha256=presented.fingerprint_sha256,
                peer_not_after=max(0, int(presented.not_after.timestamp())),
            ),
            outcome="failure",
            error=Error(type=exc.reason, message=str(exc)[:4096]),
            labels={} if presented is None else presented_labels(presented),
            attested=True,
        )

    # -- outbound --------------------------------------------------------------------

    async def _listen_outbound(
        self, listen: str, targets: list[Outbound], listeners: list[socket.socket]
    ) -> None:
        """One local port: for one service, every request or connection goes to it; for
        several (HTTP), each request goes to the service its Host header names."""
        routes = [self._outbound_route(target) for target in targets]
        route, connect = routes[0]
        select = None
        if len(routes) > 1:
            select = by_host(
                {
                    name: route
                    for route, _ in routes
                    for name in service_names(
                        str(route.target.service), str(route.target.namespace)
                    )
                }
            )
            # Before a request names its service (a bad head, a slow one) there is none.
            route = dataclasses.replace(route, target=Peer())
        proxy = HttpProxy(
            route, self._emit, select=select, now_ns=self._now_ns, calls=self._in_flight
        )
        destination = route.target

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._track(task)  # cancelled, and so audited, when the sidecar stops
            peer = writer.get_extra_info("peername")[:2]
            if targets[0].protocol == "http":
                await proxy.serve(reader, writer, None, peer)
                return
            x = self._tcp_exchange(self._now_ns(), "outbound", self._local, destination)
            await self._tcp(reader, writer, connect, x)

        for listener in listeners:
            server = await asyncio.start_server(handle, sock=listener, limit=STREAM_LIMIT)
            self._servers.append(server)

    def _outbound_route(self, target: Outbound) -> tuple[Route, Callable[[], Awaitable[Upstream]]]:
        """The route to one upstream service, and how to open a connection to it: mTLS, and
        the server's SVID checked against the configured identity (secure naming)."""
        up_host, up_port = split_host_port(target.upstream)
        expected = SpiffeId.parse(target.identity)
        namespace = target.namespace or expected.namespace or self.namespace
        sni = f"{target.service}.{namespace}.svc.cluster.local"
        limits = self.config.limits

        async def connect() -> Upstream:
            context, own_until_ns = _require(self._client_ctx), self._client_until_ns
            reader, writer = await asyncio.open_connection(
                up_host, up_port, ssl=context, server_hostname=sni, limit=STREAM_LIMIT
            )
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            try:
                server = verify_peer_svid(der, self.bundle, datetime.now(UTC), expected)
            except PeerIdentityError as exc:
                writer.close()
                raise SecureNamingError(f"{target.service}: {exc}") from None
            tls = PeerTLS.verified(server, ssl_object, der, self.bundle)
            # reused while both SVIDs are valid: the inbound sidecar refuses a request on a
            # connection whose client SVID expired (RFC 5280 §6.1.3 (a)(2))
            return Upstream(reader, writer, tls, until_ns=min(tls.valid_until_ns, own_until_ns))

        pool = self._pool(connect)
        destination = Peer(
            identity=target.identity,
            service=target.service,
            namespace=namespace,
            ip=up_host,
            port=up_port,
            host=sni,
        )
        route = Route(
            "outbound",
            self._local,
            destination,
            str(self.identity),
            pool,
            limits,
            body_digests=self.config.audit.body_digests,
        )
        return route, connect

    def _pool(self, connect: Callable[[], Awaitable[Upstream]]) -> Pool:
        limits = self.config.limits
        pool = Pool(
            connect,
            size=limits.pool_size,
            connect_timeout_s=limits.connect_timeout_s,
            now_ns=self._now_ns,
        )
        self._pools.append(pool)
        return pool

    # -- TCP mode --------------------------------------------------------------------

    def _tcp_exchange(self, start_ns: int, direction: str, local: Peer, remote: Peer) -> Exchange:
        return Exchange(
            event_id=new_event_id(lambda: start_ns),
            start_ns=start_ns,
            reporter=str(self.identity),
            kind="tcp",
            direction=direction,
            local=local,
            remote=remote,
        )

    async def _tcp(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connect: Callable[[], Awaitable[Upstream]],
        x: Exchange,
    ) -> None:
        """One audit event per connection: identities, bytes each way, how it ended."""
        try:
            upstream = await asyncio.wait_for(connect(), self.config.limits.connect_timeout_s)
        except SecureNamingError as exc:
            x.flag, x.detail, x.end = "SNM", str(exc), "refused"
        except (OSError, TimeoutError) as exc:
            x.flag, x.detail, x.end = "UF", f"connection failure ({exc or 'timeout'})", "refused"
        else:
            x.connected_to(upstream.tls)
            tally = [0, 0]
            try:
                with self._in_flight:
                    result = await relay(
                        (reader, writer),
                        (upstream.reader, upstream.writer),
                        idle_timeout_s=self.config.limits.idle_timeout_s,
                        tally=tally,
                        expiry=relay_expiry(x.tls, upstream),
                        now_ns=self._now_ns,
                    )
            except asyncio.CancelledError:  # the sidecar stopped with the connection open
                x.flag, x.detail, x.end = "DC", "the sidecar stopped", "sidecar_stopped"
                x.request_bytes, x.response_bytes = tally
                upstream.close()
                writer.close()
                self._emit(to_event(x, self._now_ns()))
                raise
            x.relayed(result)
            upstream.close()
        writer.close()
        self._emit(to_event(x, self._now_ns()))


def read_bundle(path: Path) -> bytes:
    """The CA bundle the server and peers are checked against; a file that is not one is a
    config error naming it (ssl's own words name no file)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"server.bundle: cannot read {path}: {exc.strerror}") from None
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        detail = re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc.args[-1] if exc.args else exc))
        if isinstance(exc, UnicodeDecodeError):
            detail = "not a text file"
        raise ConfigError(
            f"server.bundle: {path} is not a PEM file of CA certificates ({detail}); "
            "give the mesh CA's certificate, such as DATA/ca/ca.pem of the server"
        ) from None
    return pem


def bind_listeners(config: SidecarConfig) -> dict[str, list[socket.socket]]:
    """A bound socket (or one per address a host name has) for every `listen` address, not
    yet listening: an address in use, one not on this host, a port that needs privileges
    and two spellings of one address are found here, each naming its config key."""
    keys: dict[str, list[str]] = {}
    if config.inbound is not None:
        keys[config.inbound.listen] = ["inbound.listen"]
    for n, target in enumerate(config.outbound):
        keys.setdefault(target.listen, []).append(f"outbound[{n}].listen")
    bound: dict[str, list[socket.socket]] = {}
    try:
        for listen, where in keys.items():
            try:
                bound[listen] = _bind(*split_host_port(listen))
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ConfigError(
                    f"{', '.join(where)}: cannot listen on {listen}: {reason}"
                ) from None
        seen: dict[tuple[int, str, int], str] = {}
        for listen, sockets in bound.items():
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                for (family, other_host, other_port), other in seen.items():
                    hosts = {host, other_host}
                    same = len(hosts) == 1 or bool(hosts & {"0.0.0.0", "::"})  # a wildcard
                    if other != listen and family == sock.family and port == other_port and same:
                        raise ConfigError(
                            f"{', '.join(keys[other])} ({other}) and {', '.join(keys[listen])} "
                            f"({listen}) are the same address {host} port {port}: give each "
                            "listener a port of its own"
                        )
                seen[(sock.family, host, port)] = listen
    except BaseException:
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return bound


def _bind(host: str, port: int) -> list[socket.socket]:
    """Bind as asyncio.start_server does: every address of the host, SO_REUSEADDR, IPv6
    sockets IPv6-only."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _require(context: ssl.SSLContext | None) -> ssl.SSLContext:
    assert context is not None, "credentials are loaded before listeners start"
    return context


def presented_labels(presented: PresentedCertificate) -> dict[str, str]:
    """What a refused client presented, for its `authn` event: names as X.509 has them
    (RFC 4514 subject and issuer; every SAN, `URI:spiffe://…` among them), not an identity:
    nothing here was proven."""
    return {
        "presented.subject": presented.subject[:1024],
        "presented.issuer": presented.issuer[:1024],
        "presented.sans": ", ".join(presented.sans)[:1024],
        "presented.serial": presented.serial[:1024],
    }
