"""Starts the server process: open the ledger, start the sequencer, serve HTTP until told to stop.

On SIGINT/SIGTERM uvicorn finishes open requests, then the collector commits what was
submitted and signs a last checkpoint before the store is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from auditmesh.collector import Collector
from auditmesh.datadir import open_ledger, writer_lock
from auditmesh.httpbody import BODY_TIMEOUT_S, BodyDeadline
from auditmesh.identity.ca import DEFAULT_SVID_TTL, CAPaths, MeshCA, init_command
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.workload import Credentials, SelfIssued
from auditmesh.ingest.otlp_grpc import OtlpGrpcError, OtlpGrpcServer
from auditmesh.pending import PendingWatcher
from auditmesh.server import api_auth
from auditmesh.server.app import create_app
from auditmesh.server.mesh import MeshApi, create_mesh_app, peer_protocol
from auditmesh.server.metrics import Metrics
from auditmesh.server.protocol import HEADER_TIMEOUT_S, DeadlineProtocol, admit, with_deadlines

SERVER_SVID_TTL = timedelta(days=7)  # the mesh listener's own, renewed at half-life
MAX_CONNECTIONS = 4096  # per listener (`--max-connections`), unless the open-file limit is lower
FD_RESERVE = 256  # file descriptors left beside the listeners' connections (store, logs)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutdown, which would skip the last checkpoint;
    here the signals only ask the server to exit and the caller finishes the job."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup for a HOST:PORT listener, with the TLS layer put in front of
        each connection by its protocol factory rather than by the listener (`admit`,
        server/protocol.py): each connection takes its place under the listener's limit as
        it is accepted, before its handshake, and gives it back as soon as the handshake
        fails; the handshake must end within the header timeout (uvicorn leaves asyncio's
        60 s), and a TLS connection the server closes (at a stop too, an idle pooled one such
        as a sidecar emitter's, which never reads the close) is aborted if its close has not
        ended within CLOSE_LINGER_S (uvloop's default, 30 s, waits that long for a client's
        close_notify, holding the descriptor and the connection's place)."""
        assert sockets is None  # serve() always binds HOST:PORT
        await self.lifespan.startup()  # off (lifespan="off"): does nothing
        config = self.config
        protocol_class = cast(type[DeadlineProtocol], config.http_protocol_class)  # _config's

        def make() -> DeadlineProtocol:
            return protocol_class(
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                admit(make, tls=config.ssl),
                host=config.host,
                port=config.port,
                backlog=config.backlog,
            )
        except OSError as exc:  # as uvicorn: logged, then exit status 3
            logging.getLogger("uvicorn.error").error(exc)
            sys.exit(3)
        self.servers = [server]
        self.started = True


class _MeshServer(_Server):
    """The mesh listener, renewing its own SVID at half-life while it serves."""

    def __init__(self, config: uvicorn.Config, own: SelfIssued) -> None:
        super().__init__(config)
        self._own = own

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        renewals = asyncio.ensure_future(self._own.run_renewals(_renewed))
        try:
            await super().serve(sockets)
        finally:
            renewals.cancel()


def _renewed(credentials: Credentials) -> None:
    until = credentials.not_after.isoformat(timespec="seconds")
    print(f"auditmesh server: mesh certificate renewed, valid until {until}", flush=True)


async def _serve_until_signalled(*servers: uvicorn.Server) -> None:
    loop = asyncio.get_running_loop()

    def stop_all(sig: int) -> None:
        for server in servers:
            server.handle_exit(sig, None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all, sig)
    await asyncio.gather(*(server.serve() for server in servers))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _say(text: str) -> None:
    print(text, flush=True)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, e.g. 127.0.0.1:7600, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _check_free(host: str, port: int, flag: str) -> None:
    """A clear error before the banner when another process listens on HOST:PORT (uvicorn
    would print a bare `[Errno 98]` and exit 3 after the server said it was up)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        raise ValueError(
            f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}"
            + ("; another process (another auditmesh server?) has it: stop it, or" if busy else ";")
            + f" choose another {flag}"
        ) from None


def _open_files_limit(wanted: int) -> int | None:
    """The process's open-file limit (ulimit -n), first raised towards `wanted` as far as its
    hard limit allows (macOS starts processes at 256, many Linux shells at 1024); None when
    unlimited or unknown (Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):  # macOS: at most OPEN_MAX
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_limit(asked: int | None, listeners: int) -> int:
    """Each listener's limit on open connections: `asked` (--max-connections), else
    MAX_CONNECTIONS or less, so that the listeners' connections together leave FD_RESERVE
    (or, under a small open-file limit, half of that limit) of the open-file limit; said
    when lowered, or when `asked` does not fit. The open-file limit is raised first, as far
    as it may be."""
    per_listener = MAX_CONNECTIONS if asked is None else asked
    files = _open_files_limit(per_listener * listeners + FD_RESERVE)
    fits = None if files is None else max(1, (files - min(FD_RESERVE, files // 2)) // listeners)
    if asked is None:
        if fits is None or fits >= MAX_CONNECTIONS:
            return MAX_CONNECTIONS
        print(
            f"auditmesh server: at most {fits} open connections per listener, not "
            f"{MAX_CONNECTIONS}, for the open-file limit of {files} (ulimit -n); raise it "
            "to serve more",
            flush=True,
        )
        return fits
    if fits is not None and asked > fits:
        print(
            f"auditmesh server: warning: --max-connections {asked} on {listeners} listener(s) "
            f"does not fit the open-file limit of {files} (ulimit -n): past about {fits} "
            "connections per listener the server may run out of file descriptors",
            flush=True,
        )
    return asked


def _config(
    app: Starlette,
    host: str,
    port: int,
    protocol: type[DeadlineProtocol],
    header_timeout_s: float,
    body_timeout_s: float,
    max_connections: int,
) -> uvicorn.Config:
    """uvicorn's settings for a listener; `protocol` (httptools) gets the deadlines on request
    heads and on bodies discarded after an early answer, and the listener's limit on open
    connections (server/protocol.py)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=with_deadlines(
            protocol,
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
            max_connections=max_connections,
        ),
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


def _mesh_server(
    data_dir: Path,
    collector: Collector,
    host: str,
    port: int,
    svid_ttl: timedelta,
    reads: Sequence[BaseRoute] = (),
    *,
    api_listen: str | None = None,
    metrics: Metrics | None = None,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> uvicorn.Server:
    """The mTLS listener for sidecars, with the server's own SVID from the mesh CA; `reads`
    are the API's event reads, open here to mesh client certificates (server/api_auth.py);
    `api_listen` (the API listener's HOST:PORT) is named to OTLP exporters sent here.
    Request heads and join, renew and batch bodies have the same deadlines as the plain
    listener's."""
    ca = MeshCA.load(data_dir)
    server_id = SpiffeId.audit_server(ca.trust_domain)
    own = SelfIssued(ca, server_id, SERVER_SVID_TTL, datetime.now(UTC))
    api = MeshApi(data_dir, ca, collector, server_id, svid_ttl=svid_ttl, metrics=metrics)
    app = create_mesh_app(api, api_listen=api_listen)
    app.router.routes.extend(reads)
    token = api_auth.load_or_create_token(data_dir)
    app.add_middleware(api_auth.ApiAuth, token=token, collector=collector)
    app.add_middleware(BodyDeadline, timeout_s=body_timeout_s)
    protocol = peer_protocol(ca.trust_bundle())
    config = _config(app, host, port, protocol, header_timeout_s, body_timeout_s, max_connections)
    config.load()
    config.ssl = own.context
    print(f"auditmesh server: mesh mTLS https://{host}:{port} as {server_id}", flush=True)
    return _MeshServer(config, own)


def _start_otlp_grpc(
    collector: Collector,
    listen: tuple[str, int] | None,
    *,
    required: bool,
    metrics: Metrics | None = None,
    max_connections: int | None = None,
    header_timeout_s: float | None = None,
) -> OtlpGrpcServer | None:
    """The OTLP/gRPC receiver (issue 5, ingest/otlp_grpc.py) on its own thread, a listener
    with its own `max_connections` and its HTTP/2 handshake bounded by `header_timeout_s`.
    When the address was not asked for explicitly, a busy port is a warning, not a failed
    start."""
    if listen is None:
        return None
    try:
        observe = None if metrics is None else functools.partial(metrics.count_otlp, "grpc")
        server = OtlpGrpcServer(
            collector,
            *listen,
            observe=observe,
            max_connections=max_connections,
            handshake_timeout_s=header_timeout_s,
        ).start()
    except OtlpGrpcError as exc:
        if required:
            raise ValueError(f"{exc} (choose --otlp-grpc HOST:PORT or off)") from None
        print(f"auditmesh server: {exc}; OTLP/gRPC is off (see --otlp-grpc)", flush=True)
        return None
    print(f"auditmesh server: OTLP/gRPC {server.address}", flush=True)
    return server


def serve(
    data_dir: Path,
    host: str,
    port: int,
    *,
    origin: str | None = None,
    checkpoint_interval_s: float = 1.0,
    mesh_listen: tuple[str, int] | None = None,
    svid_ttl: timedelta = DEFAULT_SVID_TTL,
    otlp_grpc: tuple[str, int] | None = None,
    otlp_grpc_required: bool = False,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_connections: int | None = None,
) -> None:
    with writer_lock(data_dir):  # one sequencer per data directory
        _check_free(host, port, "--listen")
        mesh_on = mesh_listen is not None and CAPaths.under(data_dir).certificate.exists()
        if mesh_on:
            assert mesh_listen is not None
            _check_free(*mesh_listen, "--mesh-listen")
        listeners = 1 + int(mesh_on) + int(otlp_grpc is not None)  # each has --max-connections
        max_connections = connection_limit(max_connections, listeners)
        ledger = open_ledger(data_dir, origin=origin)
        collector = Collector(ledger.log, checkpoint_interval_ns=int(checkpoint_interval_s * 1e9))
        collector.start()
        # events an operator's `auditmesh ca …` queued beside the running server
        pending = PendingWatcher(data_dir, collector.submit, report=_say)
        otlp_server: OtlpGrpcServer | None = None
        try:  # whatever fails from here on, the collector signs its last checkpoint
            pending.start()
            metrics = Metrics(ledger.store, collector)  # one registry, fed by every listener
            otlp_server = _start_otlp_grpc(
                collector,
                otlp_grpc,
                required=otlp_grpc_required,
                metrics=metrics,
                max_connections=max_connections,
                header_timeout_s=header_timeout_s,
            )
            app = create_app(ledger, collector, metrics=metrics, body_timeout_s=body_timeout_s)
            config = _config(
                app, host, port, DeadlineProtocol, header_timeout_s, body_timeout_s, max_connections
            )
            servers: list[uvicorn.Server] = [_Server(config)]
            print(
                f"auditmesh server: http://{host}:{port}  data {data_dir}  "
                f"log {ledger.log.origin}  entries {ledger.log.size}\n"
                f"verifier key: {ledger.vkey}\n"
                f"API token: {api_auth.load_or_create_token(data_dir)}  "
                f"(in {data_dir / api_auth.TOKEN_FILE}; reads need it)",
                flush=True,
            )
            if mesh_on:
                assert mesh_listen is not None
                reads = app.state.read_routes
                mesh = _mesh_server(
                    data_dir,
                    collector,
                    *mesh_listen,
                    svid_ttl,
                    reads,
                    api_listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                    metrics=metrics,
                    header_timeout_s=header_timeout_s,
                    body_timeout_s=body_timeout_s,
                    max_connections=max_connections,
                )
                servers.append(mesh)
            elif mesh_listen is not None:  # the default: say why sidecars cannot connect
                print(
                    f"no mesh CA in {data_dir}: the sidecar listener (--mesh-listen) is off; "
                    f"run `{init_command(data_dir)}` (or your mesh's trust domain) and "
                    "restart the server",
                    flush=True,
                )
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(_serve_until_signalled(*servers))
        finally:
            if otlp_server is not None:  # in-flight Exports finish before the collector stops
                otlp_server.stop()
            pending.stop()  # a last round: what was queued meanwhile goes in now
            collector.stop()
            ledger.close()
            print("auditmesh server: stopped; last checkpoint signed", flush=True)
