"""Accepting inbound connections: STRICT / PERMISSIVE / DISABLE mTLS and peer identity.

The listener owns its socket so it can peek at the first byte (PERMISSIVE: a TLS record
starts with 0x16, RFC 8446 §5.1) before choosing TLS or plaintext, and so a failed
handshake is an exception here — an `authn` audit event — instead of a line in asyncio's
log. After the handshake the peer's X.509-SVID is checked (exactly one URI SAN, …), and
again at a request after it or its CA expired (`PeerTLS.valid_until_ns`, `recheck`).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import (
    PeerIdentityError,
    PresentedCertificate,
    cert_sha256,
    load_certificates,
    valid_until,
    verify_peer_svid,
)
from auditmesh.identity.workload import sni_of

TLS_HANDSHAKE = 0x16
STREAM_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True)
class PeerTLS:
    """What a TLS handshake established about the other side: the caller (inbound) or the
    upstream server (outbound), once `verify_peer_svid` has accepted its certificate."""

    spiffe_id: SpiffeId
    version: str
    cert_sha256: str
    not_after: int  # Unix seconds
    # RFC 5280 §6.1.3 (a)(2): the SVID's path validates while it and the CA that signed it
    # are valid; the earlier notAfter in Unix ns, compared with the clock at each request
    valid_until_ns: int
    der: bytes  # the certificate, checked again in full after `valid_until_ns` (`recheck`)
    sni: str | None = None  # inbound: the server name the caller asked for

    @classmethod
    def verified(
        cls, spiffe_id: SpiffeId, ssl_object: ssl.SSLObject, der: bytes, bundle: bytes
    ) -> PeerTLS:
        cert = x509.load_der_x509_certificate(der)
        until = valid_until(cert, anchors(bundle))
        return cls(
            spiffe_id,
            ssl_object.version() or "",
            cert_sha256(der),
            int(cert.not_valid_after_utc.timestamp()),
            int(until.timestamp()) * 1_000_000_000,
            der,
            sni_of(ssl_object),
        )


@functools.lru_cache(maxsize=4)
def anchors(bundle: bytes) -> tuple[x509.Certificate, ...]:
    """The bundle's CA certificates, parsed once per bundle."""
    return tuple(load_certificates(bundle))


@dataclass(frozen=True, slots=True)
class Accepted:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: PeerTLS | None  # None: plaintext (PERMISSIVE or DISABLE)
    remote: tuple[str, int]


class NothingSent(Exception):
    """The peer connected and closed without sending a byte (a port probe): not audited."""


class HandshakeRefused(Exception):
    """mTLS failed; `reason` is a short code, the message why. `presented` is the client's
    certificate when the handshake got that far (the sidecar's server context defers the
    validity-period check to `verify_peer_svid`, so an expired SVID is seen too; a chain
    OpenSSL cannot verify, or no certificate, leaves only OpenSSL's message)."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        presented: PresentedCertificate | None = None,
        version: str | None = None,
    ) -> None:
        self.reason = reason
        self.presented = presented
        self.version = version
        super().__init__(message)


async def _wait_readable(sock: socket.socket, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(sock.fileno())


async def _first_byte(sock: socket.socket, timeout: float) -> int | None:
    await _wait_readable(sock, timeout)
    try:
        head = sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, ConnectionError):
        return None
    return head[0] if head else None


async def accept(
    sock: socket.socket,
    mode: str,
    context: Callable[[], ssl.SSLContext],
    bundle: bytes,
    *,
    handshake_timeout: float,
) -> Accepted:
    """Wrap an accepted socket per the PeerAuthentication mode; raise `HandshakeRefused`."""
    loop = asyncio.get_running_loop()
    remote = sock.getpeername()[:2]
    use_tls = False
    if mode != "DISABLE":
        try:
            first = await _first_byte(sock, handshake_timeout)
        except TimeoutError:
            raise HandshakeRefused("timeout", "the client sent nothing in time") from None
        if first is None:
            raise NothingSent
        use_tls = first == TLS_HANDSHAKE
        if mode == "STRICT" and not use_tls:
            raise HandshakeRefused("not_tls", "plaintext sent to a STRICT mTLS listener")
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            sock,
            ssl=context() if use_tls else None,
            ssl_handshake_timeout=handshake_timeout if use_tls else None,
        )
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise HandshakeRefused(_reason(exc), f"TLS handshake failed: {detail}") from None
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise HandshakeRefused("handshake_aborted", f"TLS handshake aborted: {exc}") from None
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    if not use_tls:
        return Accepted(reader, writer, None, remote)
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:  # PERMISSIVE asks for a certificate without requiring one
        writer.close()
        raise HandshakeRefused(
            "no_client_certificate",
            "TLS without a client certificate: present an X.509-SVID (mTLS), or send "
            "plaintext to this PERMISSIVE listener",
            version=ssl_object.version(),
        )
    try:
        spiffe_id = _verify(der, bundle, datetime.now(UTC), ssl_object.version())
    except HandshakeRefused:
        writer.close()
        raise
    return Accepted(reader, writer, PeerTLS.verified(spiffe_id, ssl_object, der, bundle), remote)


def _verify(der: bytes, bundle: bytes, now: datetime, version: str | None) -> SpiffeId:
    try:
        return verify_peer_svid(der, anchors(bundle), now)
    except PeerIdentityError as exc:
        raise HandshakeRefused(
            exc.reason, str(exc), presented=exc.presented, version=version
        ) from None


def recheck(peer: PeerTLS, bundle: bytes, now_ns: int) -> HandshakeRefused | None:
    """At a request on a kept-alive connection after `peer.valid_until_ns`: the refusal a
    handshake would get now (RFC 5280 §6.1.3 (a)(2)), or None when the certificate is valid
    (the clock went back)."""
    try:
        _verify(peer.der, bundle, datetime.fromtimestamp(now_ns / 1e9, UTC), peer.version)
    except HandshakeRefused as refused:
        return refused
    return None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, as a short code for the audit event's error.type."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        verify = (exc.verify_message or "").lower()
        return "certificate_expired" if "expired" in verify else "untrusted_certificate"
    text = (exc.reason or str(exc)).lower().replace("_", " ")
    if "certificate required" in text or "peer did not return a certificate" in text:
        return "no_client_certificate"
    if "expired" in text:
        return "certificate_expired"
    if "unknown ca" in text or "unable to get" in text or "verify failed" in text:
        return "untrusted_certificate"
    if "wrong version" in text or "http request" in text or "record" in text:
        return "not_tls"
    return "tls_error"
