"""Mesh CA: files and modes on disk, root properties, and what an issued SVID contains."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from auditmesh.identity.ca import DEFAULT_SVID_TTL, CAError, MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId, SpiffeIdError, parse
from auditmesh.identity.svid import cert_sha256, make_csr, verify_peer_svid

from .conftest import NOW, TD

WORKLOAD = parse(f"spiffe://{TD}/ns/payments/sa/api")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- ca init -------------------------------------------------------------------------------


def test_init_writes_key_0600_even_with_an_open_umask(data_dir: Path, open_umask: None) -> None:
    init_ca(data_dir, TD, now=NOW)
    assert mode_of(data_dir / "ca" / "ca-key.pem") == 0o600
    assert mode_of(data_dir / "ca") == 0o700
    assert not any(p.name.endswith(".tmp") for p in (data_dir / "ca").iterdir())


def test_init_records_the_trust_domain(mesh_ca: MeshCA, data_dir: Path) -> None:
    meta = json.loads((data_dir / "ca" / "ca.json").read_text())
    assert meta["trust_domain"] == TD
    assert meta["ca_sha256"] == mesh_ca.fingerprint
    assert MeshCA.load(data_dir).trust_domain == TD


def test_root_is_a_p256_ca_with_its_own_svid(mesh_ca: MeshCA) -> None:
    root = mesh_ca.certificate
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert uri_sans(root) == [f"spiffe://{TD}"]
    root.verify_directly_issued_by(root)
    assert root.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert mesh_ca.trust_bundle() == root.public_bytes(serialization.Encoding.PEM)


def test_init_refuses_to_overwrite_without_force(mesh_ca: MeshCA, data_dir: Path) -> None:
    before = (data_dir / "ca" / "ca-key.pem").read_bytes()
    with pytest.raises(CAError, match="already exists.*--force"):
        init_ca(data_dir, TD, now=NOW)
    assert (data_dir / "ca" / "ca-key.pem").read_bytes() == before
    replaced = init_ca(data_dir, TD, now=NOW, force=True)
    assert replaced.fingerprint != mesh_ca.fingerprint
    assert mode_of(data_dir / "ca" / "ca-key.pem") == 0o600
    assert MeshCA.load(data_dir).fingerprint == replaced.fingerprint


def test_init_rejects_a_bad_trust_domain(data_dir: Path) -> None:
    with pytest.raises(SpiffeIdError, match="lowercase"):
        init_ca(data_dir, "Example.org", now=NOW)
    assert not data_dir.exists()


def test_load_without_a_ca_says_how_to_create_one(data_dir: Path) -> None:
    with pytest.raises(CAError, match="auditmesh ca init"):
        MeshCA.load(data_dir)


def test_load_refuses_a_key_readable_by_others(mesh_ca: MeshCA, data_dir: Path) -> None:
    key_path = data_dir / "ca" / "ca-key.pem"
    key_path.chmod(0o644)  # the operator's mistake this check exists for
    with pytest.raises(CAError, match="chmod 600"):
        MeshCA.load(data_dir)


def test_load_refuses_a_key_that_does_not_match(data_dir: Path, tmp_path: Path) -> None:
    init_ca(data_dir, TD, now=NOW)
    other = tmp_path / "other"
    init_ca(other, TD, now=NOW)
    (data_dir / "ca" / "ca.pem").write_bytes((other / "ca" / "ca.pem").read_bytes())
    with pytest.raises(CAError, match="does not belong"):
        MeshCA.load(data_dir)


def test_load_refuses_metadata_for_another_trust_domain(mesh_ca: MeshCA, data_dir: Path) -> None:
    meta_path = data_dir / "ca" / "ca.json"
    meta = json.loads(meta_path.read_text())
    meta["trust_domain"] = "other.org"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CAError, match="names trust domain 'other.org'"):
        MeshCA.load(data_dir)


def test_load_reports_damage(mesh_ca: MeshCA, data_dir: Path) -> None:
    (data_dir / "ca" / "ca.json").write_text("[]")
    with pytest.raises(CAError, match="damaged"):
        MeshCA.load(data_dir)


# --- issuance ------------------------------------------------------------------------------


def issue(
    mesh_ca: MeshCA,
    csr_pem: bytes,
    ttl: timedelta = DEFAULT_SVID_TTL,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> x509.Certificate:
    pem = mesh_ca.issue_svid(csr_pem, WORKLOAD, ttl, now=NOW, randbytes=randbytes)
    return x509.load_pem_x509_certificate(pem)


def test_svid_has_exactly_one_uri_san_and_leaf_constraints(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    cert = issue(mesh_ca, csr_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(WORKLOAD))]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.issuer == mesh_ca.certificate.subject
    cert.verify_directly_issued_by(mesh_ca.certificate)


def test_the_servers_reserved_id_is_issued_only_to_the_cas_holder(
    mesh_ca: MeshCA, csr_pem: bytes
) -> None:
    server = SpiffeId.audit_server(TD)
    assert server.reserved and not SpiffeId.kubernetes(TD, "auditmesh", "server").reserved
    for reserved in (server, SpiffeId.from_segments(TD, "auditmesh", "anything")):
        with pytest.raises(CAError, match="reserved for auditmesh's own components"):
            mesh_ca.issue_svid(csr_pem, reserved, now=NOW)
    cert = x509.load_pem_x509_certificate(mesh_ca.issue_svid(csr_pem, server, now=NOW, own=True))
    assert verify_peer_svid(cert, [mesh_ca.certificate], NOW) == server


def test_svid_validity_is_backdated_for_skew_and_lasts_the_ttl(
    mesh_ca: MeshCA, csr_pem: bytes
) -> None:
    cert = issue(mesh_ca, csr_pem)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + DEFAULT_SVID_TTL == NOW + timedelta(hours=24)
    short = issue(mesh_ca, csr_pem, ttl=timedelta(hours=1))
    assert short.not_valid_after_utc == NOW + timedelta(hours=1)


def test_svid_never_outlives_the_ca(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    cert = issue(mesh_ca, csr_pem, ttl=timedelta(days=365 * 20))
    assert cert.not_valid_after_utc == mesh_ca.certificate.not_valid_after_utc


def test_serials_are_random_128_bit(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    serials = {issue(mesh_ca, csr_pem).serial_number for _ in range(8)}
    assert len(serials) == 8
    assert all(0 < s < 2**128 for s in serials)
    fixed = issue(mesh_ca, csr_pem, randbytes=lambda n: b"\x00" * (n - 1) + b"\x2a")
    assert fixed.serial_number == 42


def test_names_requested_in_the_csr_are_ignored(
    mesh_ca: MeshCA, workload_key: ec.EllipticCurvePrivateKey
) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=admin,O=evil"))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("bank.example"),
                    x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/kube-system/sa/admin"),
                ]
            ),
            critical=False,
        )
        .sign(workload_key, hashes.SHA256())
    )
    cert = issue(mesh_ca, csr.public_bytes(serialization.Encoding.PEM))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(WORKLOAD))]
    assert "evil" not in cert.subject.rfc4514_string()
    assert cert.public_key() == workload_key.public_key()


def test_ed25519_csr_is_accepted(mesh_ca: MeshCA) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue(mesh_ca, make_csr(key, WORKLOAD))
    assert cert.public_key() == key.public_key()


OTHER_KEYS: dict[str, Callable[[], ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]] = {
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


@pytest.mark.parametrize("kind", sorted(OTHER_KEYS))
def test_other_key_types_are_refused(mesh_ca: MeshCA, kind: str) -> None:
    key = OTHER_KEYS[kind]()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CAError, match="P-256 or Ed25519"):
        issue(mesh_ca, csr.public_bytes(serialization.Encoding.PEM))


def test_csr_with_a_bad_signature_is_refused(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the ECDSA signature value
    tampered = x509.load_der_x509_csr(bytes(der))
    assert not tampered.is_signature_valid
    with pytest.raises(CAError, match="signature does not verify"):
        issue(mesh_ca, tampered.public_bytes(serialization.Encoding.PEM))


def test_garbage_csr_is_refused(mesh_ca: MeshCA) -> None:
    with pytest.raises(CAError, match="not a PEM certificate signing request"):
        issue(mesh_ca, b"hello")


def test_other_trust_domain_is_refused(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    with pytest.raises(CAError, match="only in trust domain 'example.org'"):
        mesh_ca.issue_svid(csr_pem, parse("spiffe://evil.org/ns/a/sa/b"), now=NOW)


def test_root_id_and_bad_ttl_are_refused(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    with pytest.raises(CAError, match="has no path"):
        mesh_ca.issue_svid(csr_pem, SpiffeId(TD), now=NOW)
    with pytest.raises(CAError, match="must be positive"):
        mesh_ca.issue_svid(csr_pem, WORKLOAD, timedelta(0), now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        mesh_ca.issue_svid(csr_pem, WORKLOAD, now=NOW.replace(tzinfo=None))


def test_issued_svid_passes_the_peer_check(mesh_ca: MeshCA, csr_pem: bytes) -> None:
    pem = mesh_ca.issue_svid(csr_pem, WORKLOAD, now=NOW)
    got = verify_peer_svid(pem, mesh_ca.trust_bundle(), NOW + timedelta(hours=1), WORKLOAD)
    assert got == WORKLOAD
    assert cert_sha256(x509.load_pem_x509_certificate(pem)) != mesh_ca.fingerprint
