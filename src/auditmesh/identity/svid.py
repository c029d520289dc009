"""X.509-SVIDs from the workload's side: checking a peer's certificate, CSRs, renewal timing.

Its place in the house: a sidecar calls :func:`verify_peer_svid` on the certificate its TLS peer
presented (inbound: the client; outbound: the server, with the expected identity for secure
naming). On refusal, :class:`PeerIdentityError` carries what was presented so the sidecar can
write an ``authn`` audit event with outcome failure. Pure functions over certificates; the clock
and the random source are parameters.

Implements the X.509-SVID specification (spiffe/spiffe ``standards/X509-SVID.md``): §2 (exactly
one URI SAN), §4.1 (leaf ``cA=false``), §4.3 (key usage ``digitalSignature``, no ``keyCertSign``
or ``cRLSign``), §5.1 (RFC 5280 path validation, here via ``cryptography.x509.verification``) and
§5.2 (leaf validation: SPIFFE ID with a non-root path).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from auditmesh.identity.spiffe import SpiffeId, SpiffeIdError, parse

RENEW_FRACTION = 0.5  # renew at half-life, as Istio does
RENEW_JITTER = 0.1  # ±10% of the half-life


@dataclass(frozen=True, slots=True)
class PresentedCertificate:
    """What a peer presented, as an audit event records it."""

    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    sans: tuple[str, ...]  # "URI:spiffe://...", "DNS:...", "IP:...", "email:..."
    fingerprint_sha256: str  # hex of SHA-256 over the DER
    serial: str  # hex
    not_before: datetime
    not_after: datetime

    @property
    def uri_sans(self) -> tuple[str, ...]:
        return tuple(s[4:] for s in self.sans if s.startswith("URI:"))


class PeerIdentityError(Exception):
    """A peer's certificate does not prove a SPIFFE identity we accept.

    ``reason`` is a short stable code (e.g. ``"uri_san_count"``, ``"expired"``, ``"untrusted"``,
    ``"id_mismatch"``); ``presented`` describes the certificate (None if it could not be parsed).
    """

    def __init__(
        self,
        reason: str,
        message: str,
        presented: PresentedCertificate | None,
        *,
        expected: SpiffeId | None = None,
    ) -> None:
        self.reason = reason
        self.message = message
        self.presented = presented
        self.expected = expected
        super().__init__(message)


def cert_sha256(cert: x509.Certificate | bytes) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (Envoy's XFCC ``Hash=``)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def describe_certificate(cert: x509.Certificate) -> PresentedCertificate:
    """Summarise ``cert`` for an audit event (works on any certificate, valid or not)."""
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        ext = None
    if ext is not None:
        for name in ext:
            sans.append(_format_general_name(name))
    return PresentedCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=tuple(sans),
        fingerprint_sha256=cert_sha256(cert),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _format_general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return f"{type(name).__name__}:{name.value!r}"


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or several) or from a single DER certificate."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


PeerChain = bytes | x509.Certificate | Sequence[bytes | x509.Certificate]


def _as_chain(peer: PeerChain) -> list[x509.Certificate]:
    if isinstance(peer, bytes):
        return load_certificates(peer)
    if isinstance(peer, x509.Certificate):
        return [peer]
    chain: list[x509.Certificate] = []
    for item in peer:
        chain.extend(load_certificates(item) if isinstance(item, bytes) else [item])
    return chain


def verify_peer_svid(
    peer: PeerChain,
    trust_bundle: bytes | Sequence[x509.Certificate],
    now: datetime,
    expected_id: SpiffeId | None = None,
    *,
    trust_domain: str | None = None,
) -> SpiffeId:
    """Check the X.509-SVID a peer presented and return its SPIFFE ID.

    ``peer`` is the leaf (DER or PEM bytes, or a Certificate) or the chain leaf-first, as a TLS
    stack hands it over. ``trust_bundle`` holds the trusted CA certificates (PEM bytes or a list).
    The ID must be in ``trust_domain``, by default the trust domain named in the URI SAN of the
    bundle CA that signed the leaf. With ``expected_id`` the ID must equal it (secure naming).
    Raises :class:`PeerIdentityError`; raises ValueError for a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    try:
        chain = _as_chain(peer)
        if not chain:
            raise PeerIdentityError("no_certificate", "the peer presented no certificate", None)
        leaf = chain[0]
        presented = describe_certificate(leaf)
    except ValueError as exc:
        raise PeerIdentityError(
            "malformed", f"the peer's certificate could not be parsed: {exc}", None
        ) from exc

    def refuse(reason: str, message: str) -> PeerIdentityError:
        return PeerIdentityError(reason, message, presented, expected=expected_id)

    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        # X509-SVID §4.1, §5.2: signing certificates must not be used for authentication.
        raise refuse("ca_as_leaf", "the peer presented a CA certificate (cA=true) as its leaf")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise refuse("key_usage", "the peer's certificate has no key usage extension") from None
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        # X509-SVID §4.3, §5.2.
        raise refuse(
            "key_usage",
            "the peer's certificate key usage must include digitalSignature and must not "
            "include keyCertSign or cRLSign",
        )

    uris = presented.uri_sans
    if len(uris) != 1:
        # X509-SVID §2: exactly one URI SAN; validators MUST reject several.
        raise refuse(
            "uri_san_count",
            f"the peer's certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one",
        )
    try:
        peer_id = parse(uris[0])
    except SpiffeIdError as exc:
        raise refuse("invalid_spiffe_id", f"the peer's URI SAN is not a SPIFFE ID: {exc}") from exc
    if not peer_id.path:
        # X509-SVID §5.2: a leaf's SPIFFE ID has a non-root path.
        raise refuse("invalid_spiffe_id", f"the peer's SPIFFE ID {peer_id} has no path")

    if now < presented.not_before:
        raise refuse(
            "not_yet_valid",
            f"the peer's certificate is not valid before {presented.not_before.isoformat()} "
            f"(now {now.isoformat()}); check the clocks",
        )
    if now > presented.not_after:
        raise refuse(
            "expired",
            f"the peer's certificate expired at {presented.not_after.isoformat()} "
            f"(now {now.isoformat()}); the peer must renew its SVID",
        )

    anchors = (
        load_certificates(trust_bundle) if isinstance(trust_bundle, bytes) else list(trust_bundle)
    )
    if not anchors:
        raise ValueError("the trust bundle is empty")
    builder = PolicyBuilder().store(Store(anchors)).time(now)
    try:
        # X509-SVID §5.1: RFC 5280 path validation. Every SVID carries clientAuth (§4.4), so
        # the client-certificate policy serves for both directions.
        verified = builder.build_client_verifier().verify(leaf, chain[1:])
    except VerificationError as exc:
        raise refuse(
            "untrusted",
            f"the peer's certificate (issuer {presented.issuer!r}) does not chain to the "
            f"trust bundle: {exc}",
        ) from exc

    domain = trust_domain if trust_domain is not None else _anchor_trust_domain(verified.chain[-1])
    if domain is None:
        raise ValueError("the trust bundle's CA names no SPIFFE trust domain; pass trust_domain")
    if not peer_id.member_of(domain):
        raise refuse(
            "wrong_trust_domain",
            f"the peer's SPIFFE ID {peer_id} is not in this mesh's trust domain {domain!r}",
        )
    if expected_id is not None and peer_id != expected_id:
        raise refuse(
            "id_mismatch",
            f"the peer is {peer_id}, but {expected_id} was expected for this destination",
        )
    return peer_id


def valid_until(leaf: x509.Certificate, anchors: Sequence[x509.Certificate]) -> datetime:
    """The moment an SVID stops being valid: the earlier of its notAfter and that of the CA
    in the trust bundle that signed it. X509-SVID §5.1 asks for RFC 5280 path validation,
    whose §6.1.3 (a)(2) wants both valid at the current time.

    The signer is found by subject, and among several CAs of that name (a CA rotation keeps
    the name) by the key that verifies the leaf's signature; with none of them, the leaf's
    own notAfter. Of several that verify it (a CA renewed with the same key), the latest:
    one valid path is enough (RFC 5280 §6.1). A sole namesake is taken unchecked: callers
    validated the path first, and that spares a signature check per handshake."""
    namesakes = [a for a in anchors if a.subject == leaf.issuer]
    if len(namesakes) > 1:
        namesakes = [a for a in namesakes if _signed_by(leaf, a)]
    ca_until = max((a.not_valid_after_utc for a in namesakes), default=None)
    return leaf.not_valid_after_utc if ca_until is None else min(leaf.not_valid_after_utc, ca_until)


def _signed_by(leaf: x509.Certificate, anchor: x509.Certificate) -> bool:
    """Whether ``anchor``'s key made ``leaf``'s signature (RFC 5280 §6.1.3 (a)(1))."""
    try:
        leaf.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def bundle_trust_domain(trust_bundle: bytes) -> str | None:
    """The trust domain the bundle's CA names in its own URI SAN (X509-SVID §3.2), if any."""
    for anchor in load_certificates(trust_bundle):
        domain = _anchor_trust_domain(anchor)
        if domain is not None:
            return domain
    return None


def _anchor_trust_domain(anchor: x509.Certificate) -> str | None:
    """The trust domain of a signing certificate's own SVID (X509-SVID §3.2), if it has one."""
    for uri in describe_certificate(anchor).uri_sans:
        try:
            return parse(uri).trust_domain
        except SpiffeIdError:
            continue
    return None


def renew_at(not_before: datetime, not_after: datetime, rng: random.Random) -> datetime:
    """When to renew an SVID: at half its lifetime, jittered by ±10% of the half-life.

    Istio rotates at half-life with jitter so that a fleet does not renew in lockstep.
    """
    lifetime = not_after - not_before
    if lifetime <= timedelta(0):
        raise ValueError("not_after must be later than not_before")
    fraction = RENEW_FRACTION * (1.0 + rng.uniform(-RENEW_JITTER, RENEW_JITTER))
    return not_before + lifetime * fraction


SvidPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def make_csr(private_key: SvidPrivateKey, spiffe_id: SpiffeId | None = None) -> bytes:
    """A PEM CSR signed with the workload's key (which never leaves the workload).

    The CA ignores the names a CSR asks for and uses the ID bound to the join token or the
    current SVID; ``spiffe_id`` is only informational.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
    algorithm = None if isinstance(private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(private_key, algorithm).public_bytes(serialization.Encoding.PEM)
