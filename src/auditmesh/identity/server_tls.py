"""Talking to the audit server: its SPIFFE ID is checked before a byte of the request leaves.

Every workload of the mesh holds a certificate the trust bundle accepts, so chain validation
alone would let any of them pose as the server (with a network position): collect join
tokens, hand out SVIDs, acknowledge audit batches it never stores. Server certificates carry
only a URI SAN, so hostname checking cannot help; X509-SVID §5 asks the client to check the
peer's SPIFFE ID instead. Python's `ssl` has no verify callback, so the check runs in an
httpcore network stream right after the TLS handshake: a peer that is not
`SpiffeId.audit_server(TD)` gets a closed connection and the caller an `httpx.ConnectError`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx

from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import PeerIdentityError, bundle_trust_domain, verify_peer_svid

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def server_client(
    base_url: str,
    context: ssl.SSLContext,
    bundle_pem: bytes,
    *,
    clock: Clock = utcnow,
    timeout: float = 10.0,
) -> httpx.AsyncClient:
    """An httpx client to the audit server at `base_url` over `context` (with or without this
    workload's SVID) that only talks to a peer proving the server's SPIFFE ID."""
    if httpx.URL(base_url).scheme != "https":
        # Over plain HTTP there is no handshake to check: the token or batch would go out to
        # whoever answers, in clear.
        raise ValueError(f"the server URL must be https:// (the mesh listener), not {base_url}")
    domain = bundle_trust_domain(bundle_pem)
    if domain is None:
        raise ValueError("the trust bundle's CA names no SPIFFE trust domain")
    expected = SpiffeId.audit_server(domain)

    def check(der: bytes | None) -> None:
        if der is None:
            raise PeerIdentityError("no_certificate", "the peer presented no certificate", None)
        verify_peer_svid(der, bundle_pem, clock(), expected)

    transport = httpx.AsyncHTTPTransport(verify=context)
    # httpx builds its pool without a way to pass a network backend; the same pool, with one.
    limits = httpx.Limits()  # httpx's defaults, which its own pool would have had
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_CheckingBackend(check, expected),
    )
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)


class _CheckingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, check: Callable[[bytes | None], None], expected: SpiffeId) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._check = check
        self._expected = expected

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CheckedStream(stream, self)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _CheckedStream(stream, self)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    async def verified(self, stream: httpcore.AsyncNetworkStream) -> httpcore.AsyncNetworkStream:
        ssl_object = stream.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        try:
            self._check(der)
        except PeerIdentityError as exc:
            await stream.aclose()
            raise httpcore.ConnectError(
                f"the peer is not the audit server ({self._expected}): {exc}; check the server URL"
            ) from None
        return stream


class _CheckedStream(httpcore.AsyncNetworkStream):
    """A plain TCP stream whose TLS upgrade is checked by the backend before it is used."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, backend: _CheckingBackend) -> None:
        self._inner = inner
        self._backend = backend

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return await self._backend.verified(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
