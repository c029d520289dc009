"""C2SP signed notes with Ed25519 keys, byte-compatible with golang.org/x/mod/sumdb/note.

Place in the house: the ledger's signing layer. The sequencer signs checkpoints with a
:class:`Signer`; verifiers, witnesses and auditors open them with :class:`Verifier` keys. Pure
functions over bytes and strings: no I/O, no clocks, randomness only through ``generate_key``'s
``seed``. Spec: https://c2sp.org/signed-note; where the spec leaves room (signature limits,
duplicate signatures, key-string parsing) we do what the Go package does.
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from auditmesh.ledger.errors import VerificationError

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Note",
    "Signature",
    "Signer",
    "Verifier",
    "generate_key",
    "is_valid_name",
    "key_hash",
    "open_note",
    "sign",
]

# signed-note §"Signature types": 0x01 is Ed25519.
ALG_ED25519 = 0x01
# signed-note §"Format": verifiers SHOULD cap the signature count (and MUST accept 16); the Go
# package rejects a note with more than 100 signature lines, counting duplicates.
MAX_SIGNATURES = 100

_SIG_PREFIX = "\u2014 "  # em dash, space
_SKEY_PREFIX = "PRIVATE+KEY+"
_HEX = frozenset("0123456789abcdefABCDEF")
# Unicode White_Space, which is what Go's unicode.IsSpace tests (str.isspace differs: it also
# accepts U+001C..U+001F).
_WHITE_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)


def is_valid_name(name: str) -> bool:
    """Key-name rule (signed-note §"Format"): non-empty UTF-8, no Unicode spaces, no '+'.

    Also no ASCII control characters: Go's key parsers allow them, but a note containing one
    can never be opened (§"Format"), so such a key could sign nothing.
    """
    if not name or "+" in name or _control_char(name) is not None:
        return False
    return not any(ch in _WHITE_SPACE for ch in name) and _is_utf8(name)


def key_hash(name: str, key: bytes) -> int:
    """Key ID: SHA-256(name ‖ 0x0A ‖ type byte ‖ public key)[:4], big-endian (§"Signatures").

    ``key`` is the type byte followed by the public key, as in a verifier key.
    """
    digest = hashlib.sha256(name.encode() + b"\n" + key).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True, slots=True)
class Verifier:
    """An Ed25519 verifier key: ``<name>+<hex key hash>+<base64(0x01 ‖ public key)>``."""

    name: str
    key_hash: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_hash_and_key(self.key_hash, self.public_key, "public")

    @classmethod
    def from_vkey(cls, text: str) -> Verifier:
        """Parse a verifier key string, rejecting anything Go's ``note.NewVerifier`` rejects."""
        name, _, rest = text.partition("+")
        hash16, _, key64 = rest.partition("+")
        key = _parse_key_fields("verifier key", name, hash16, key64)
        if int(hash16, 16) != key_hash(name, key):
            raise ValueError(
                f"verifier key hash {hash16} does not match the key (computed "
                f"{key_hash(name, key):08x}) for {name!r}"
            )
        return cls(name=name, key_hash=int(hash16, 16), public_key=_ed25519_key(key, "public"))

    @classmethod
    def from_ed25519(cls, name: str, public_key: bytes) -> Verifier:
        """A verifier for a raw 32-byte Ed25519 public key (Go's ``NewEd25519VerifierKey``)."""
        _check_name(name)
        if len(public_key) != 32:
            raise ValueError(f"Ed25519 public key is {len(public_key)} bytes, want 32")
        return cls(name, key_hash(name, bytes([ALG_ED25519]) + public_key), public_key)

    @property
    def vkey(self) -> str:
        """The verifier key string."""
        encoded = binascii.b2a_base64(bytes([ALG_ED25519]) + self.public_key, newline=False)
        return f"{self.name}+{self.key_hash:08x}+{encoded.decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid Ed25519 signature of ``message`` by this key."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signer:
    """An Ed25519 signer key: ``PRIVATE+KEY+<name>+<hex key hash>+<base64(0x01 ‖ seed)>``."""

    name: str
    key_hash: int
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_hash_and_key(self.key_hash, self.seed, "private")

    @classmethod
    def from_skey(cls, text: str) -> Signer:
        """Parse a signer key string; error messages never echo the secret part."""
        if not text.startswith(_SKEY_PREFIX):
            raise ValueError("malformed signer key: must start with 'PRIVATE+KEY+'")
        name, _, rest = text[len(_SKEY_PREFIX) :].partition("+")
        hash16, _, key64 = rest.partition("+")
        key = _parse_key_fields("signer key", name, hash16, key64)
        seed = _ed25519_key(key, "private")
        # The hash covers the public key, so it can only be checked after deriving it.
        signer = cls(name=name, key_hash=int(hash16, 16), seed=seed)
        if signer.key_hash != signer.verifier().key_hash:
            raise ValueError(f"signer key hash {hash16} does not match the key for {name!r}")
        return signer

    @property
    def skey(self) -> str:
        """The signer key string (secret)."""
        encoded = binascii.b2a_base64(bytes([ALG_ED25519]) + self.seed, newline=False)
        return f"{_SKEY_PREFIX}{self.name}+{self.key_hash:08x}+{encoded.decode()}"

    def verifier(self) -> Verifier:
        """The matching verifier (public) key."""
        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return Verifier.from_ed25519(self.name, public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def generate_key(name: str, seed: bytes | None = None) -> tuple[str, str]:
    """A new (signer key, verifier key) pair for ``name``; ``seed`` (32 bytes) makes it fixed.

    With a seed of 32 zero bytes this reproduces Go's ``GenerateKey`` reading a zero reader.
    """
    _check_name(name)
    if seed is None:
        seed = secrets.token_bytes(32)
    if len(seed) != 32:
        raise ValueError(f"Ed25519 seed is {len(seed)} bytes, want 32")
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    pub = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    signer = Signer(name, key_hash(name, bytes([ALG_ED25519]) + pub), seed)
    return signer.skey, signer.verifier().vkey


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line of a note: key name, key hash and the base64 text as it appeared."""

    name: str
    key_hash: int
    b64: str

    @property
    def line(self) -> str:
        """The signature line, without its newline."""
        return f"{_SIG_PREFIX}{self.name} {self.b64}"


@dataclass(frozen=True, slots=True)
class Note:
    """An opened note: its text (ending in newline) and its signatures, in note order.

    ``sigs`` were made by a known verifier and checked; ``unverified_sigs`` are by keys the
    caller did not supply, kept so that a note can be re-signed (cosigned) without losing them.
    """

    text: str
    sigs: tuple[Signature, ...]
    unverified_sigs: tuple[Signature, ...] = ()


def sign(text: str, signers: Sequence[Signer], *, existing: Sequence[Signature] = ()) -> bytes:
    """Sign ``text`` with every signer and return the encoded note (signed-note §"Format").

    ``existing`` signatures (e.g. ``note.sigs + note.unverified_sigs`` of an opened note) are
    kept ahead of the new ones, except those by a key that signs again here, as Go's ``Sign``.
    Raises ValueError if the result would not be a note that :func:`open_note` accepts.
    """
    if not text.endswith("\n"):
        raise ValueError("note text must end in a newline")
    if not _is_utf8(text):
        raise ValueError("note text is not valid UTF-8 (lone surrogate)")
    bad = _control_char(text)
    if bad is not None:
        raise ValueError(f"note text contains control character U+{ord(bad):04X}")
    if not signers and not existing:
        raise ValueError("a note needs at least one signature")

    message = text.encode()
    fresh: list[str] = []
    replaced: set[tuple[str, int]] = set()
    for signer in signers:
        _check_name(signer.name)
        replaced.add((signer.name, signer.key_hash))
        raw = signer.key_hash.to_bytes(4, "big") + signer.sign(message)
        fresh.append(Signature(signer.name, signer.key_hash, _b64(raw)).line)

    kept: list[str] = []
    for sig in existing:
        _check_name(sig.name)
        if (sig.name, sig.key_hash) in replaced:
            continue
        prior = _b64decode(sig.b64)
        if prior is None or len(prior) < 5 or int.from_bytes(prior[:4], "big") != sig.key_hash:
            raise ValueError(f"existing signature by {sig.name!r} does not match its key hash")
        kept.append(sig.line)

    lines = kept + fresh
    if len(lines) > MAX_SIGNATURES:
        raise ValueError(f"a note carries at most {MAX_SIGNATURES} signatures, got {len(lines)}")
    return message + b"\n" + "".join(line + "\n" for line in lines).encode()


class UntrustedNote(VerificationError):
    """No signature of the note is by a key trusted here (C2SP signed-note: a verifier
    ignores signatures by unknown keys): usually the wrong verifier key was given.
    `expected` lists the trusted keys and `computed` the signers', as `name+hash` (the
    first two fields of a verifier key)."""

    def __init__(self, trusted: list[str], signers: list[str]) -> None:
        self.trusted, self.signers = trusted, signers  # read by _describe, from super()
        super().__init__("note has no verifiable signatures", expected=trusted, computed=signers)

    def _describe(self) -> str:
        # Either the key is another log's or the note was signed by another key: never send
        # the reader to a copy of the key that the same hands could have replaced.
        return (
            f"{self.message}: it is signed by {', '.join(self.signers) or 'no key'}, and the "
            f"key trusted here is {', '.join(self.trusted) or 'none'}; check that key against "
            "a copy of the log's key obtained independently"
        )

    def __reduce__(self) -> tuple[object, ...]:  # crosses process boundaries, as its base
        return (UntrustedNote, (self.trusted, self.signers))


def open_note(note: bytes, verifiers: Sequence[Verifier]) -> Note:
    """Parse ``note`` and check its signatures by the known ``verifiers`` (§"Signatures").

    Unknown keys are recorded, not checked. Raises VerificationError if the note is malformed,
    if a known key's signature is invalid, or if no known key signed it. Raises ValueError if
    two different verifiers share a name and key hash (the list itself is then untrustworthy).
    """
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        other = known.setdefault((v.name, v.key_hash), v)
        if other != v:
            raise ValueError(f"ambiguous key {v.name}+{v.key_hash:08x}: two different verifiers")

    # §"Format": valid UTF-8, no ASCII control characters other than newline.
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(f"invalid UTF-8 at byte {exc.start}") from None
    bad = _control_char(decoded)
    if bad is not None:
        raise _malformed(f"control character U+{ord(bad):04X}")

    # The text ends at the last blank line; the signature block follows it.
    split = decoded.rfind("\n\n")
    if split < 0:
        raise _malformed("no blank line before the signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block or not block.endswith("\n"):
        raise _malformed("signature block is empty or does not end in a newline")

    message = text.encode()
    sigs: list[Signature] = []
    unverified: list[Signature] = []
    seen_known: set[tuple[str, int]] = set()
    seen_unknown: set[str] = set()
    for count, line in enumerate(block[:-1].split("\n"), start=1):
        if not line.startswith(_SIG_PREFIX):
            raise _malformed(f"signature line {count} does not start with an em dash and space")
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        raw = _b64decode(b64) if b64 else None
        if raw is None or not is_valid_name(name) or len(raw) < 5:
            raise _malformed(f"signature line {count} is not '— <name> <base64>'")
        if count > MAX_SIGNATURES:
            raise _malformed(f"more than {MAX_SIGNATURES} signatures")
        sig = Signature(name, int.from_bytes(raw[:4], "big"), b64)
        verifier = known.get((sig.name, sig.key_hash))
        if verifier is None:
            # Unknown key: record it once per identical line, never check it.
            if line not in seen_unknown:
                seen_unknown.add(line)
                unverified.append(sig)
            continue
        # Go checks only the first signature by each known key and drops the repeats.
        if (sig.name, sig.key_hash) in seen_known:
            continue
        seen_known.add((sig.name, sig.key_hash))
        if not verifier.verify(message, raw[4:]):
            raise VerificationError(f"invalid signature for key {sig.name}+{sig.key_hash:08x}")
        sigs.append(sig)

    if not sigs:
        raise UntrustedNote(
            sorted(f"{n}+{h:08x}" for n, h in known),
            [f"{s.name}+{s.key_hash:08x}" for s in unverified],
        )
    return Note(text=text, sigs=tuple(sigs), unverified_sigs=tuple(unverified))


def _parse_key_fields(kind: str, name: str, hash16: str, key64: str) -> bytes:
    """Check the name, hash and key-data fields shared by signer and verifier keys."""
    if not is_valid_name(name):
        raise ValueError(f"malformed {kind}: invalid key name {name!r} (empty, space, '+'?)")
    if len(hash16) != 8 or not set(hash16) <= _HEX:
        raise ValueError(f"malformed {kind}: key hash must be 8 hex digits")
    # Go's base64 decoder skips CR and LF; so do we, to accept exactly the same strings.
    key = _b64decode(key64.replace("\r", "").replace("\n", ""))
    if key is None:
        raise ValueError(f"malformed {kind}: key data is not standard padded base64")
    if not key:
        raise ValueError(f"malformed {kind}: key data is empty")
    return key


def _ed25519_key(key: bytes, what: str) -> bytes:
    """The 32 key bytes after an Ed25519 type byte, or ValueError."""
    if key[0] != ALG_ED25519:
        raise ValueError(f"unknown key algorithm 0x{key[0]:02x} (only 0x01, Ed25519)")
    if len(key) != 33:
        raise ValueError(f"Ed25519 {what} key is {len(key) - 1} bytes, want 32")
    return key[1:]


def _check_name(name: str) -> None:
    if not is_valid_name(name):
        raise ValueError(
            f"invalid key name {name!r}: must be non-empty UTF-8 without spaces, '+' or "
            "control characters"
        )


def _check_hash_and_key(hash32: int, key: bytes, what: str) -> None:
    if not 0 <= hash32 < 1 << 32:
        raise ValueError(f"key hash {hash32} is not a 32-bit unsigned integer")
    if len(key) != 32:
        raise ValueError(f"Ed25519 {what} key is {len(key)} bytes, want 32")


def _control_char(text: str) -> str | None:
    """The first ASCII control character other than newline, if any."""
    for ch in text:
        if ch < " " and ch != "\n":
            return ch
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def _b64decode(text: str) -> bytes | None:
    """RFC 4648 §4 standard base64 with padding, as Go's ``base64.StdEncoding``; None if bad."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return None


def _malformed(why: str) -> VerificationError:
    return VerificationError(f"malformed note: {why}")
