"""Peer SVID checks: the bad-certificate matrix, what a refusal exposes, renewal timing."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.identity.ca import MeshCA, build_root, init_ca
from auditmesh.identity.spiffe import parse
from auditmesh.identity.svid import (
    PeerIdentityError,
    cert_sha256,
    describe_certificate,
    make_csr,
    renew_at,
    valid_until,
    verify_peer_svid,
)

from .conftest import NOW, TD
from .forge import forge_leaf, load_ca_cert, load_ca_key

CLIENT = parse(f"spiffe://{TD}/ns/shop/sa/frontend")
SERVER = parse(f"spiffe://{TD}/ns/shop/sa/checkout")


@dataclass(frozen=True)
class Env:
    data_dir: Path
    ca: MeshCA
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    other_dir: Path

    def issued(self, spiffe_id: str = str(CLIENT)) -> x509.Certificate:
        csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
        pem = self.ca.issue_svid(csr, parse(spiffe_id), now=NOW)
        return x509.load_pem_x509_certificate(pem)


@pytest.fixture
def env(mesh_ca: MeshCA, data_dir: Path, tmp_path: Path) -> Env:
    other = tmp_path / "other-mesh"
    init_ca(other, TD, now=NOW)  # same trust domain name, different root: must not be trusted
    return Env(data_dir, mesh_ca, load_ca_cert(data_dir), load_ca_key(data_dir), other)


@dataclass(frozen=True)
class Case:
    make: Callable[[Env], x509.Certificate]
    reason: str
    message: str
    expected: str | None = None


def _forge(**kwargs: object) -> Callable[[Env], x509.Certificate]:
    def make(env: Env) -> x509.Certificate:
        return forge_leaf(env.ca_cert, env.ca_key, now=NOW, **kwargs)  # type: ignore[arg-type]

    return make


def _other_ca(env: Env) -> x509.Certificate:
    return forge_leaf(
        load_ca_cert(env.other_dir), load_ca_key(env.other_dir), now=NOW, uris=(str(CLIENT),)
    )


def _self_signed(env: Env) -> x509.Certificate:
    return forge_leaf(None, env.ca_key, now=NOW, uris=(str(CLIENT),))


def _issuer_name_only(env: Env) -> x509.Certificate:
    # Claims our CA as issuer (same name, same AKI) but is signed by another key.
    return forge_leaf(
        env.ca_cert, ec.generate_private_key(ec.SECP256R1()), now=NOW, uris=(str(CLIENT),)
    )


MATRIX: dict[str, Case] = {
    "no SAN at all": Case(_forge(), "uri_san_count", "has 0 URI SANs"),
    "DNS SAN only": Case(_forge(dns=("frontend.shop",)), "uri_san_count", "has 0 URI SANs"),
    "two URI SANs": Case(
        _forge(uris=(str(CLIENT), str(SERVER))), "uri_san_count", "has 2 URI SANs"
    ),
    "three URI SANs": Case(
        _forge(uris=(str(CLIENT), str(SERVER), f"spiffe://{TD}/x")),
        "uri_san_count",
        "has 3 URI SANs",
    ),
    "expired": Case(
        _forge(
            uris=(str(CLIENT),),
            not_before=NOW - timedelta(days=2),
            not_after=NOW - timedelta(seconds=1),
        ),
        "expired",
        "expired at",
    ),
    "not yet valid": Case(
        _forge(uris=(str(CLIENT),), not_before=NOW + timedelta(hours=1)),
        "not_yet_valid",
        "not valid before",
    ),
    "signed by another mesh's CA": Case(_other_ca, "untrusted", "does not chain"),
    "self-signed": Case(_self_signed, "untrusted", "does not chain"),
    "our issuer name, wrong key": Case(_issuer_name_only, "untrusted", "does not chain"),
    "the CA certificate itself": Case(lambda e: e.ca_cert, "ca_as_leaf", "cA=true"),
    "CA-flagged leaf": Case(_forge(uris=(str(CLIENT),), ca=True), "ca_as_leaf", "cA=true"),
    "no digitalSignature": Case(
        _forge(uris=(str(CLIENT),), digital_signature=False), "key_usage", "digitalSignature"
    ),
    "keyCertSign on a leaf": Case(
        _forge(uris=(str(CLIENT),), key_cert_sign=True), "key_usage", "keyCertSign"
    ),
    "URI SAN not SPIFFE": Case(
        _forge(uris=("https://frontend.shop/",)), "invalid_spiffe_id", "not a SPIFFE ID"
    ),
    "SPIFFE ID without path": Case(
        _forge(uris=(f"spiffe://{TD}",)), "invalid_spiffe_id", "has no path"
    ),
    "other trust domain": Case(
        _forge(uris=("spiffe://evil.org/ns/shop/sa/frontend",)),
        "wrong_trust_domain",
        "not in this mesh's trust domain 'example.org'",
    ),
    "wrong expected ID": Case(
        lambda e: e.issued(str(CLIENT)), "id_mismatch", "was expected", expected=str(SERVER)
    ),
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_bad_certificate_matrix(env: Env, name: str) -> None:
    case = MATRIX[name]
    cert = case.make(env)
    expected = parse(case.expected) if case.expected else None
    with pytest.raises(PeerIdentityError) as info:
        verify_peer_svid(cert, env.ca.trust_bundle(), NOW, expected)
    error = info.value
    assert error.reason == case.reason, str(error)
    assert case.message in str(error)
    # Whatever was refused, the audit event can record what was presented.
    assert error.presented is not None
    assert error.presented.fingerprint_sha256 == cert_sha256(cert)
    assert error.presented.subject == cert.subject.rfc4514_string()
    assert error.expected == expected


def test_good_svid_in_every_input_form(env: Env) -> None:
    cert = env.issued()
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    bundle = env.ca.trust_bundle()
    for peer in (cert, der, pem, [der], [cert]):
        assert verify_peer_svid(peer, bundle, NOW) == CLIENT
    assert verify_peer_svid(der, [env.ca_cert], NOW, CLIENT) == CLIENT
    assert verify_peer_svid(der, bundle, NOW, trust_domain=TD) == CLIENT


def test_explicit_trust_domain_overrides_the_bundle(env: Env) -> None:
    with pytest.raises(PeerIdentityError, match="trust domain 'other.org'") as info:
        verify_peer_svid(env.issued(), env.ca.trust_bundle(), NOW, trust_domain="other.org")
    assert info.value.reason == "wrong_trust_domain"


def test_bundle_with_both_roots_accepts_both(env: Env) -> None:
    bundle = env.ca.trust_bundle() + (env.other_dir / "ca" / "ca.pem").read_bytes()
    assert verify_peer_svid(_other_ca(env), bundle, NOW) == CLIENT
    assert verify_peer_svid(env.issued(), bundle, NOW) == CLIENT


def test_validity_edges(env: Env) -> None:
    cert = env.issued()
    bundle = env.ca.trust_bundle()
    assert verify_peer_svid(cert, bundle, cert.not_valid_after_utc) == CLIENT
    assert verify_peer_svid(cert, bundle, cert.not_valid_before_utc) == CLIENT
    with pytest.raises(PeerIdentityError) as info:
        verify_peer_svid(cert, bundle, cert.not_valid_after_utc + timedelta(seconds=1))
    assert info.value.reason == "expired"


def test_valid_until_is_the_earlier_of_the_svids_and_its_cas_not_after(env: Env) -> None:
    """RFC 5280 §6.1.3 (a)(2): the SVID's path validates while both are valid."""
    uris = (str(CLIENT),)
    ca_end = env.ca_cert.not_valid_after_utc
    day = forge_leaf(env.ca_cert, env.ca_key, now=NOW, uris=uris)
    outliving = forge_leaf(
        env.ca_cert, env.ca_key, now=NOW, uris=uris, not_after=ca_end + timedelta(days=1)
    )
    assert valid_until(day, [env.ca_cert]) == day.not_valid_after_utc
    assert valid_until(outliving, [env.ca_cert]) == ca_end
    assert valid_until(outliving, []) == outliving.not_valid_after_utc  # no CA of it known


def test_valid_until_takes_the_ca_that_signed_the_svid_not_its_namesake(env: Env) -> None:
    """During a CA rotation the old and new root share a subject; RFC 5280 §6.1.3 (a)(2)
    is about the one whose key signed the SVID."""

    def randbytes(n: int) -> bytes:  # the same subject serialNumber attribute, both roots
        return b"\x01" * n if n == 8 else secrets.token_bytes(n)

    old_key, new_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    old = build_root(TD, old_key, now=NOW - timedelta(days=365), randbytes=randbytes)
    new = build_root(TD, new_key, now=NOW, randbytes=randbytes)
    assert old.subject == new.subject
    assert old.not_valid_after_utc < new.not_valid_after_utc
    far = new.not_valid_after_utc + timedelta(days=1)
    uris = (str(CLIENT),)
    by_new = forge_leaf(new, new_key, now=NOW, uris=uris, not_after=far)
    by_old = forge_leaf(old, old_key, now=NOW, uris=uris, not_after=far)
    by_neither = forge_leaf(new, ec.generate_private_key(ec.SECP256R1()), now=NOW, uris=uris)

    for bundle in ([old, new], [new, old]):
        assert valid_until(by_new, bundle) == new.not_valid_after_utc
        assert valid_until(by_old, bundle) == old.not_valid_after_utc
        # signed by no CA of the bundle: its own notAfter (path validation refuses it)
        assert valid_until(by_neither, bundle) == by_neither.not_valid_after_utc


def test_unparseable_certificate(env: Env) -> None:
    with pytest.raises(PeerIdentityError, match="could not be parsed") as info:
        verify_peer_svid(b"\x30\x03garbage", env.ca.trust_bundle(), NOW)
    assert info.value.reason == "malformed"
    assert info.value.presented is None
    with pytest.raises(PeerIdentityError, match="no certificate"):
        verify_peer_svid([], env.ca.trust_bundle(), NOW)


def test_naive_time_is_a_programming_error(env: Env) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_peer_svid(env.issued(), env.ca.trust_bundle(), NOW.replace(tzinfo=None))


def test_describe_certificate_lists_all_sans(env: Env) -> None:
    cert = forge_leaf(
        env.ca_cert, env.ca_key, now=NOW, uris=(str(CLIENT), str(SERVER)), dns=("a.example",)
    )
    info = describe_certificate(cert)
    assert info.sans == (f"URI:{CLIENT}", f"URI:{SERVER}", "DNS:a.example")
    assert info.uri_sans == (str(CLIENT), str(SERVER))
    assert info.issuer == env.ca_cert.subject.rfc4514_string()
    assert info.serial == format(cert.serial_number, "x")
    assert info.not_after == cert.not_valid_after_utc


def test_cert_sha256_is_over_the_der(env: Env) -> None:
    cert = env.issued()
    der = cert.public_bytes(serialization.Encoding.DER)
    assert cert_sha256(cert) == cert_sha256(der) == hashlib.sha256(der).hexdigest()


def test_renew_at_half_life_with_ten_percent_jitter() -> None:
    start, end = NOW, NOW + timedelta(hours=24)
    times = [renew_at(start, end, random.Random(seed)) for seed in range(500)]
    assert all(start + timedelta(hours=10.8) <= t <= start + timedelta(hours=13.2) for t in times)
    assert len(set(times)) > 400  # jittered, so a fleet does not renew in lockstep
    assert min(times) < start + timedelta(hours=11) and max(times) > start + timedelta(hours=13)
    assert renew_at(start, end, random.Random(7)) == renew_at(start, end, random.Random(7))


def test_renew_at_rejects_an_empty_lifetime() -> None:
    with pytest.raises(ValueError, match="later than"):
        renew_at(NOW, NOW, random.Random(0))


def test_valid_until_of_a_ca_renewed_with_its_key_is_the_renewal(env: Env) -> None:
    """A CA renewed under the same name and key: both certificates verify the SVID, and one
    valid path is enough (RFC 5280 §6.1), so the later notAfter counts, in either order."""

    def randbytes(n: int) -> bytes:  # the same subject serialNumber attribute, both roots
        return b"\x01" * n if n == 8 else secrets.token_bytes(n)

    key = ec.generate_private_key(ec.SECP256R1())
    old = build_root(TD, key, now=NOW - timedelta(days=365), randbytes=randbytes)
    renewed = build_root(TD, key, now=NOW, randbytes=randbytes)
    assert old.subject == renewed.subject and old.not_valid_after_utc < renewed.not_valid_after_utc
    far = renewed.not_valid_after_utc + timedelta(days=1)
    leaf = forge_leaf(renewed, key, now=NOW, uris=(str(CLIENT),), not_after=far)
    for bundle in ([old, renewed], [renewed, old]):
        assert valid_until(leaf, bundle) == renewed.not_valid_after_utc
