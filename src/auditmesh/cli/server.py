"""`auditmesh server`: run the collector, the ledger and the HTTP API."""

from __future__ import annotations

import argparse

from auditmesh.cli import add_data_arg, output_dir, positive_float, positive_int
from auditmesh.cli.main import UserError
from auditmesh.httpbody import BODY_TIMEOUT_S
from auditmesh.identity.tokens import parse_ttl
from auditmesh.server.protocol import HEADER_TIMEOUT_S
from auditmesh.server.run import MAX_CONNECTIONS, parse_listen, serve
from auditmesh.store.base import StoreError

OTLP_GRPC = "127.0.0.1:4317"  # OTLP spec, "OTLP/gRPC Default Port"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "server",
        help="run the audit server (API, ledger, tlog-tiles)",
        description="Run the audit server on the data directory's ledger.",
    )
    add_data_arg(parser)
    parser.add_argument("--listen", default="127.0.0.1:7600", help="HOST:PORT to serve on")
    parser.add_argument(
        "--mesh-listen",
        default="127.0.0.1:7443",
        help="HOST:PORT of the mTLS listener for sidecars, or 'off' (needs `auditmesh ca init`)",
    )
    parser.add_argument(
        "--otlp-grpc",
        metavar="HOST:PORT",
        help="OTLP/gRPC receiver address, or 'off' (default 127.0.0.1:4317, skipped with a "
        "warning if busy); OTLP/HTTP is always on --listen at /v1/traces and /v1/logs",
    )
    parser.add_argument(
        "--svid-ttl",
        default="24h",
        help="lifetime of the SVIDs the mesh CA issues (default 24h; sidecars renew at half)",
    )
    parser.add_argument("--origin", help="log origin for a new ledger (default: host name)")
    parser.add_argument(
        "--checkpoint-interval",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="sign a checkpoint at most this often while the log grows (default 1)",
    )
    parser.add_argument(
        "--body-timeout",
        type=positive_float,
        default=BODY_TIMEOUT_S,
        metavar="SECONDS",
        help="a request body (a batch, an OTLP/HTTP export, a join) must arrive whole within "
        "SECONDS of its request head, or it is answered 408 (an OTLP/HTTP export: 503 with "
        "Retry-After, which OTel SDKs retry) and its connection closed, on "
        f"both listeners (default {BODY_TIMEOUT_S:g}); the rest of a body the server "
        "answered without reading it (401, 413, 415) has the same time, then its connection "
        "is closed",
    )
    parser.add_argument(
        "--header-timeout",
        type=positive_float,
        default=HEADER_TIMEOUT_S,
        metavar="SECONDS",
        help="a request head (request line and headers) must arrive whole within SECONDS of "
        "a new connection, or of its first byte on a kept-alive one, or the connection is "
        "closed, with a 408 answer if part of a head came, on both listeners "
        f"(default {HEADER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help="connections each listener holds open at once, TLS handshakes included; one "
        "past N is answered 503 with Connection: close (at once on --listen, after its "
        "handshake on --mesh-listen; the OTLP/gRPC receiver closes it at accept, which "
        "OTLP clients retry) while open ones are served (default "
        f"{MAX_CONNECTIONS}, or less so that every listener fits the open-file limit, "
        "ulimit -n, which the server first raises as far as its hard limit allows)",
    )
    parser.set_defaults(func=run)


def _address(text: str, flag: str, example: str) -> tuple[str, int]:
    """HOST:PORT of `flag`; refused in words that name that flag (parse_listen's name --listen)."""
    try:
        return parse_listen(text)
    except ValueError:
        raise UserError(f"{flag} wants HOST:PORT, e.g. {example}, not {text!r}") from None


def run(args: argparse.Namespace) -> int:
    host, port = _address(args.listen, "--listen", "127.0.0.1:7600")
    mesh = None
    if args.mesh_listen != "off":
        mesh = _address(args.mesh_listen, "--mesh-listen", "127.0.0.1:7443 (or off)")
    otlp_grpc = None
    if args.otlp_grpc != "off":
        otlp_grpc = _address(args.otlp_grpc or OTLP_GRPC, "--otlp-grpc", f"{OTLP_GRPC} (or off)")
    try:
        svid_ttl = parse_ttl(args.svid_ttl)
    except ValueError as exc:
        raise UserError(f"--svid-ttl: {exc}") from None
    output_dir(args.data, "--data")  # one the server can create and write, or a clear error
    try:
        serve(
            args.data,
            host,
            port,
            origin=args.origin,
            checkpoint_interval_s=args.checkpoint_interval,
            mesh_listen=mesh,
            svid_ttl=svid_ttl,
            otlp_grpc=otlp_grpc,
            otlp_grpc_required=args.otlp_grpc is not None,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            max_connections=args.max_connections,
        )
    except (ValueError, StoreError) as exc:
        raise UserError(str(exc)) from None
    return 0
