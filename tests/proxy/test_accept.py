"""`proxy.accept` on real sockets and real TLS: PERMISSIVE takes plaintext or mTLS, and TLS
without a client certificate is refused with a reason, never an unhandled error."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime, timedelta

import pytest

from auditmesh.identity.ca import MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.workload import Credentials, self_issue
from auditmesh.proxy.accept import Accepted, HandshakeRefused, accept

NOW = datetime.now(UTC)
SERVER = SpiffeId.kubernetes("cluster.local", "shop", "payments")
CLIENT = SpiffeId.kubernetes("cluster.local", "shop", "orders")


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> tuple[Credentials, Credentials]:
    data = tmp_path_factory.mktemp("ca")
    init_ca(data, "cluster.local", now=NOW)
    ca = MeshCA.load(data)
    return self_issue(ca, SERVER, NOW, timedelta(hours=1)), self_issue(
        ca, CLIENT, NOW, timedelta(hours=1)
    )


async def _accept_one(
    server: Credentials, client_context: ssl.SSLContext | None, mode: str
) -> Accepted:
    """Accept one connection on a loopback socket while a client connects (with TLS when
    `client_context` is given) and sends a request line."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def client() -> None:
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=client_context,
                server_hostname="" if client_context else None,
            )
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
        except (ssl.SSLError, ConnectionError):
            pass

    task = asyncio.create_task(client())
    try:
        sock, _ = await loop.sock_accept(listener)
        context = server.server_context(require_client_cert=mode == "STRICT", defer_time_check=True)
        accepted = await accept(
            sock, mode, lambda: context, server.bundle_pem, handshake_timeout=5.0
        )
        accepted.writer.close()
        return accepted
    finally:
        await task
        listener.close()


def _client_context(credentials: Credentials | None, bundle: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=bundle.decode())
    context.check_hostname = False
    if credentials is not None:
        context = credentials.client_context()
    return context


def test_permissive_takes_plaintext(credentials: tuple[Credentials, Credentials]) -> None:
    server, _ = credentials
    accepted = asyncio.run(_accept_one(server, None, "PERMISSIVE"))
    assert accepted.peer is None


def test_permissive_takes_mtls_and_names_the_peer(
    credentials: tuple[Credentials, Credentials],
) -> None:
    server, client = credentials
    accepted = asyncio.run(
        _accept_one(server, _client_context(client, server.bundle_pem), "PERMISSIVE")
    )
    assert accepted.peer is not None and accepted.peer.spiffe_id == CLIENT


def test_permissive_refuses_tls_without_a_client_certificate(
    credentials: tuple[Credentials, Credentials],
) -> None:
    server, _ = credentials
    with pytest.raises(HandshakeRefused) as refused:
        asyncio.run(_accept_one(server, _client_context(None, server.bundle_pem), "PERMISSIVE"))
    assert refused.value.reason == "no_client_certificate"
    assert "present an X.509-SVID" in str(refused.value)
    assert refused.value.presented is None and refused.value.version == "TLSv1.3"
