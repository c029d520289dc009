"""The floor of a Python proxy: a bare TCP/TLS byte relay on uvloop, for `bench.proxy_bench`.

It does the least any proxy in this topology must do in CPython: accept, terminate or
originate TLS (mTLS, TLS 1.3, the same SVIDs), and copy bytes both ways with flow control. No
HTTP parsing, no policy, no audit event, no pooling. Its CPU per request, measured in the same
run as nginx and the sidecars, shows how much of the sidecar's cost is CPython's own.

    python -m bench.relay --listen PORT --connect HOST:PORT
        [--server-cert PEM --server-key PEM --client-ca PEM]   # inbound: require a client cert
        [--client-cert PEM --client-key PEM --server-ca PEM --sni NAME]  # outbound: mTLS out
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import cast

import uvloop


class Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives is written to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.pending: list[bytes] = []  # received before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS one is not a subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        else:
            peer.transport.write(data)

    @property
    def _other(self) -> asyncio.Transport | None:
        return None if self.peer is None else self.peer.transport

    def eof_received(self) -> bool:
        if self._other is not None:
            self._other.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._other is not None:
            self._other.close()

    # flow control: a peer that cannot keep up pauses reading here
    def pause_writing(self) -> None:
        if self._other is not None:
            self._other.pause_reading()

    def resume_writing(self) -> None:
        if self._other is not None:
            self._other.resume_reading()


def _tls(purpose: ssl._SSLMethod, cert: str | None, key: str, ca: str) -> ssl.SSLContext | None:
    """TLS 1.3 with our certificate, trusting `ca` for the peer's; None without a cert."""
    if not cert:
        return None
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED  # the client's default; a server must ask
    return context


async def serve(
    args: argparse.Namespace,
    downstream_half: Callable[[], Half] = Half,
    upstream_half: Callable[[], Half] = Half,
) -> None:
    """Relay every connection to `--listen` to `--connect` until SIGTERM; each side's
    protocol from its factory (`bench.audit_floor` audits what goes through)."""
    loop = asyncio.get_running_loop()
    host, _, port = args.connect.rpartition(":")
    server_tls = _tls(ssl.PROTOCOL_TLS_SERVER, args.server_cert, args.server_key, args.client_ca)
    client_tls = _tls(ssl.PROTOCOL_TLS_CLIENT, args.client_cert, args.client_key, args.server_ca)

    def accepted() -> Half:
        downstream = downstream_half()

        async def connect() -> None:
            try:
                _, upstream = await loop.create_connection(
                    upstream_half, host, int(port), ssl=client_tls, server_hostname=args.sni
                )
            except OSError:
                if downstream.transport is not None:
                    downstream.transport.close()
                return
            upstream.peer, downstream.peer = downstream, upstream
            assert upstream.transport is not None
            for data in downstream.pending:
                upstream.transport.write(data)
            downstream.pending.clear()

        loop.create_task(connect())
        return downstream

    server = await loop.create_server(accepted, "127.0.0.1", args.listen, ssl=server_tls)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--connect", required=True, help="HOST:PORT to relay to")
    for name in ("server-cert", "server-key", "client-ca", "client-cert", "client-key"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--server-ca")
    parser.add_argument("--sni")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_relay_options(parser)
    args = parser.parse_args(argv)
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
