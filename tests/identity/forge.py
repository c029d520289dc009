"""Test helper: certificates the mesh CA would never issue, signed with a real CA key.

The bad-certificate matrix needs leaves with no SAN, two URI SANs, cA=true and so on; these are
built with ``cryptography`` exactly as a misbehaving or foreign issuer would.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def load_ca_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((data_dir / "ca" / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_ca_cert(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "ca" / "ca.pem").read_bytes())


def forge_leaf(
    issuer_cert: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ca: bool = False,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A leaf with the given defects; ``issuer_cert=None`` makes it self-signed by ``key``."""
    leaf_key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forged")])
    if issuer_cert is None:
        issuer_name, signer = subject, leaf_key
    else:
        issuer_name, signer = issuer_cert.subject, issuer_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
    )
    if issuer_cert is not None:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())
