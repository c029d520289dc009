"""A workload's live credentials — key, X.509-SVID, trust bundle — as TLS contexts.

Used by the server (its own SVID on the mesh listener) and by sidecars (inbound and
outbound mTLS, and the emitter). SPIFFE names workloads by URI SAN, not DNS name, so
hostname checking is off and the peer's SPIFFE ID is checked after the handshake with
`svid.verify_peer_svid` (X509-SVID §5 "Validation").
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.identity.ca import MeshCA
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import make_csr

X509_V_FLAG_NO_CHECK_TIME = 0x200000
"""OpenSSL's verify flag (x509_vfy.h, since 1.1.0) that `ssl.VerifyFlags` does not name."""


@dataclass(frozen=True, slots=True)
class Credentials:
    spiffe_id: SpiffeId
    key_pem: bytes
    cert_pem: bytes
    bundle_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def server_context(
        self, *, require_client_cert: bool, defer_time_check: bool = False
    ) -> ssl.SSLContext:
        """TLS 1.3 server side; asks for a client SVID (required or optional).

        With `defer_time_check`, OpenSSL leaves the certificates' validity periods alone, so
        an expired SVID completes the handshake and can be recorded as presented; the caller
        MUST then validate the chain, time included, before reading a byte
        (`svid.verify_peer_svid`, as `proxy.accept` does).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        if defer_time_check:
            context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        context.sni_callback = _keep_sni
        return self._finish(context)

    def client_context(self) -> ssl.SSLContext:
        """TLS 1.3 client side presenting this SVID; the server's ID is checked afterwards."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # SPIFFE IDs are URI SANs, checked after the handshake
        context.verify_mode = ssl.CERT_REQUIRED
        return self._finish(context)

    def _finish(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_verify_locations(cadata=self.bundle_pem.decode())
        _load_chain(context, self.cert_pem, self.key_pem)
        return context


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """`ssl` loads keys only from files: use a private temporary file, removed at once."""
    fd, path = tempfile.mkstemp(prefix="auditmesh-svid-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates the file with mode 0600
            f.write(cert_pem + key_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_issue(ca: MeshCA, spiffe_id: SpiffeId, now: datetime, ttl: timedelta) -> Credentials:
    """Credentials the CA's own holder (the server) issues to itself, key kept in memory."""
    key = new_private_key()
    cert_pem = ca.issue_svid(make_csr(key, spiffe_id), spiffe_id, ttl, now=now, own=True)
    return Credentials(spiffe_id, key_to_pem(key), cert_pem, ca.trust_bundle())


class SelfIssued:
    """The server's own SVID on the mesh listener, from the CA it holds, renewed in place at
    half-life like any workload's: the one SSLContext the listener was given serves the new
    certificate to every new connection (open ones keep their session)."""

    def __init__(self, ca: MeshCA, spiffe_id: SpiffeId, ttl: timedelta, now: datetime) -> None:
        self._ca = ca
        self._ttl = ttl
        self.credentials = self_issue(ca, spiffe_id, now, ttl)
        # the mesh API validates every client chain, time included, per connection
        self.context = self.credentials.server_context(
            require_client_cert=False, defer_time_check=True
        )

    @property
    def renew_at(self) -> datetime:
        return (
            self.credentials.not_before
            + (self.credentials.not_after - self.credentials.not_before) / 2
        )

    def renew(self, now: datetime) -> None:
        self.credentials = self_issue(self._ca, self.credentials.spiffe_id, now, self._ttl)
        _load_chain(self.context, self.credentials.cert_pem, self.credentials.key_pem)

    async def run_renewals(self, on_renewed: Callable[[Credentials], None]) -> None:
        while True:
            delay = (self.renew_at - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(delay, 1.0))
            self.renew(datetime.now(UTC))
            on_renewed(self.credentials)


SNI_ATTRIBUTE = "auditmesh_sni"


def _keep_sni(ssl_object: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
    """The server name the client asked for (RFC 6066 §3), kept on the connection's SSL
    object for `sni_of`: Python has no server-side accessor for it."""
    setattr(ssl_object, SNI_ATTRIBUTE, name)


def sni_of(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The SNI a client sent to a `server_context`, None if it sent none."""
    name = getattr(ssl_object, SNI_ATTRIBUTE, None)
    return name if isinstance(name, str) else None
