"""The mesh CA: creates the root on disk and issues X.509-SVIDs from CSRs.

Its place in the house: ``auditmesh ca init`` creates it; the server loads it with
:meth:`MeshCA.load` and calls :meth:`MeshCA.issue_svid` when a sidecar redeems a join token or
renews over mTLS, and serves :meth:`MeshCA.trust_bundle`. Building certificates is pure (the clock
and the random source are parameters); file I/O is confined to :func:`init_ca` and
:meth:`MeshCA.load`.

Layout under the data directory: ``ca/ca.pem`` (root certificate), ``ca/ca-key.pem`` (PKCS#8,
created with mode 0600) and ``ca/ca.json`` (trust domain and metadata). Certificates follow the
X.509-SVID specification (spiffe/spiffe ``standards/X509-SVID.md``).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from auditmesh.fsutil import write_atomic
from auditmesh.identity.spiffe import SpiffeId, parse_trust_domain
from auditmesh.identity.svid import cert_sha256

DEFAULT_SVID_TTL = timedelta(hours=24)  # Istio's default workload certificate TTL
CA_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=5)  # notBefore is backdated by this much
META_VERSION = 1
SUGGESTED_TRUST_DOMAIN = "cluster.local"  # Kubernetes' and Istio's unless configured otherwise

RandBytes = Callable[[int], bytes]


class CAError(Exception):
    """The CA cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class CAPaths:
    directory: Path
    certificate: Path
    private_key: Path
    metadata: Path

    @classmethod
    def under(cls, data_dir: Path) -> CAPaths:
        directory = Path(data_dir) / "ca"
        return cls(directory, directory / "ca.pem", directory / "ca-key.pem", directory / "ca.json")


def mesh_trust_domain(data_dir: Path) -> str | None:
    """The trust domain of the mesh CA in `data_dir` (its metadata, no key read), or None when
    there is no readable CA there."""
    try:
        meta = json.loads(CAPaths.under(data_dir).metadata.read_bytes())
        return parse_trust_domain(meta["trust_domain"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def csr_public_key(
    csr_pem: bytes,
) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    """The key a CSR asks a certificate for, once its self-signature (proof of possession)
    verifies and the key is ECDSA P-256 or Ed25519. Raises :class:`CAError`."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CAError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise CAError("the CSR's signature does not verify; the requester must sign it")
    public_key = csr.public_key()
    if isinstance(public_key, ed25519.Ed25519PublicKey) or (
        isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    ):
        return public_key
    raise CAError("the CSR's key must be ECDSA P-256 or Ed25519")


def _random_serial(randbytes: RandBytes) -> int:
    """A positive 128-bit random serial (RFC 5280 §4.1.2.2: positive, at most 20 octets)."""
    while True:
        serial = int.from_bytes(randbytes(16), "big")
        if serial > 0:
            return serial


def _key_usage(*, digital_signature: bool, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def build_root(
    trust_domain: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
    randbytes: RandBytes = secrets.token_bytes,
) -> x509.Certificate:
    """A self-signed root for ``trust_domain`` (pure; X509-SVID §3.2, §4.1, §4.3).

    Its own SVID is ``spiffe://<trust domain>`` (a signing certificate's ID has no path).
    No name constraints: cryptography's verifier rejects URI name constraints.
    """
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "auditmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, "auditmesh mesh CA"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, randbytes(8).hex()),
        ]
    )
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(_random_serial(randbytes))
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=False, key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(SpiffeId(trust_domain)))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a fresh temporary file created with ``mode``, then rename it over."""
    write_atomic(path, data, mode=mode)


def init_command(data_dir: Path) -> str:
    """The `ca init` command that creates the CA of `data_dir`, to paste as it is: with the
    trust domain a Kubernetes mesh has unless configured otherwise (its own, if not)."""
    return (
        f"auditmesh ca init --trust-domain {SUGGESTED_TRUST_DOMAIN} "
        f"--data {shlex.quote(str(data_dir))}"
    )


def init_ca(
    data_dir: Path,
    trust_domain: str,
    *,
    now: datetime,
    force: bool = False,
    randbytes: RandBytes = secrets.token_bytes,
) -> MeshCA:
    """Create the mesh CA under ``data_dir/ca``; refuse to replace one unless ``force``."""
    trust_domain = parse_trust_domain(trust_domain)
    paths = CAPaths.under(data_dir)
    existing = [p for p in (paths.certificate, paths.private_key, paths.metadata) if p.exists()]
    if existing and not force:
        raise CAError(
            f"a mesh CA already exists in {paths.directory}; replacing it invalidates every "
            "issued SVID (use --force if that is what you want)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_root(trust_domain, key, now=now, randbytes=randbytes)
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # DESIGN.md: CA keys on disk with mode 0600, set at creation, never loosened.
    _write_new_file(paths.private_key, key_pem, 0o600)
    _write_new_file(paths.certificate, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    meta = {
        "version": META_VERSION,
        "trust_domain": trust_domain,
        "created_at": now.isoformat(),
        "ca_sha256": cert_sha256(cert),
    }
    _write_new_file(paths.metadata, (json.dumps(meta, indent=2) + "\n").encode(), 0o644)
    dir_fd = os.open(paths.directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the renames durable
    finally:
        os.close(dir_fd)
    return MeshCA(cert, key, trust_domain)


class MeshCA:
    """A loaded mesh CA: the root certificate, its key and its trust domain."""

    def __init__(
        self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, trust_domain: str
    ) -> None:
        if certificate.public_key() != key.public_key():
            raise CAError("the CA private key does not belong to the CA certificate")
        self.certificate = certificate
        self._key = key
        self.trust_domain = parse_trust_domain(trust_domain)

    @classmethod
    def load(cls, data_dir: Path) -> MeshCA:
        """Load the CA created by :func:`init_ca`; a key readable by others is refused."""
        paths = CAPaths.under(data_dir)
        if not all(p.exists() for p in (paths.certificate, paths.private_key, paths.metadata)):
            raise CAError(
                f"no mesh CA in {paths.directory}; create one with `{init_command(data_dir)}`"
            )
        mode = stat.S_IMODE(paths.private_key.stat().st_mode)
        if mode & 0o077:
            raise CAError(
                f"{paths.private_key} is accessible by group or others (mode {mode:04o}); "
                f"run `chmod 600 {paths.private_key}`"
            )
        try:
            meta = json.loads(paths.metadata.read_text())
            trust_domain = meta["trust_domain"]
            cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
            key = serialization.load_pem_private_key(paths.private_key.read_bytes(), None)
        except (ValueError, KeyError, TypeError) as exc:
            raise CAError(f"the mesh CA in {paths.directory} is damaged: {exc}") from exc
        if meta.get("version") != META_VERSION or not isinstance(trust_domain, str):
            raise CAError(f"{paths.metadata} has an unknown format")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CAError(f"{paths.private_key} is not an ECDSA P-256 key")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            cert_ids = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            cert_ids = []
        if cert_ids != [f"spiffe://{trust_domain}"]:
            raise CAError(
                f"{paths.metadata} names trust domain {trust_domain!r} but {paths.certificate} "
                f"is the CA for {cert_ids or 'no SPIFFE ID'}"
            )
        return cls(cert, key, trust_domain)

    @property
    def fingerprint(self) -> str:
        return cert_sha256(self.certificate)

    def trust_bundle(self) -> bytes:
        """The PEM trust bundle peers verify SVIDs against."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_svid(
        self,
        csr_pem: bytes,
        spiffe_id: SpiffeId,
        ttl: timedelta = DEFAULT_SVID_TTL,
        *,
        now: datetime,
        randbytes: RandBytes = secrets.token_bytes,
        own: bool = False,
    ) -> bytes:
        """Sign an X.509-SVID (PEM) for ``spiffe_id`` over the CSR's public key. A reserved
        ID (``SpiffeId.reserved``: the server's) only with ``own``, for the CA's holder.

        The CSR must carry a valid self-signature (proof of possession) over an EC P-256 or
        Ed25519 key. Any names it asks for are ignored: the SVID carries exactly one URI SAN,
        ``spiffe_id``. Valid from ``now - 5 min`` (clock skew) to ``now + ttl``, capped at the
        CA's own expiry. Raises :class:`CAError`.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        if not spiffe_id.member_of(self.trust_domain):
            raise CAError(
                f"this CA issues only in trust domain {self.trust_domain!r}, not {spiffe_id}"
            )
        if not spiffe_id.path:
            # X509-SVID §3.1: leaf SPIFFE IDs have a non-root path.
            raise CAError(f"{spiffe_id} has no path; a workload SVID needs one")
        if spiffe_id.reserved and not own:
            raise CAError(spiffe_id.reserved_refusal)
        if ttl <= timedelta(0):
            raise CAError(f"the SVID TTL must be positive, not {ttl}")
        public_key = csr_public_key(csr_pem)
        not_after = min(now + ttl, self.certificate.not_valid_after_utc)
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "auditmesh")]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(_random_serial(randbytes))
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            # X509-SVID §4.1: leaf cA=false; §4.3: digitalSignature, critical; §4.4: EKUs.
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, key_cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # X509-SVID §2: exactly one URI SAN, the SPIFFE ID.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)
