"""C2SP tlog-checkpoint: the signed tree head of the ledger, as the note text of a signed note.

Place in the house: the sequencer (``log.py``) signs one of these after each batch; ``verify.py``,
the CLI and remote clients open them. Text format per https://c2sp.org/tlog-checkpoint
§"Note text"; signing per https://c2sp.org/signed-note via :mod:`auditmesh.ledger.note`.
Pure functions, no I/O.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Signer, Verifier, open_note, sign

__all__ = ["MAX_TREE_SIZE", "Checkpoint", "open_checkpoint", "sign_checkpoint"]

# The spec puts no bound on the size; Go's sumdb/tlog and torchwood use int64, so we do too.
MAX_TREE_SIZE = (1 << 63) - 1
_HASH_SIZE = 32  # RFC 6962 SHA-256 root
_DECIMAL = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Origin, tree size and RFC 6962 root hash, plus opaque extension lines (usually none)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # §"Note text" 1: the origin is non-empty; it SHOULD (not MUST) avoid spaces and '+',
        # and sum.golang.org's "go.sum database tree" does not, so only lines are enforced.
        _check_line(self.origin, "origin")
        if not self.origin:
            raise ValueError("checkpoint origin must not be empty")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValueError(f"checkpoint tree size {self.size} is outside 0..2**63-1")
        if len(self.root_hash) != _HASH_SIZE:
            raise ValueError(
                f"checkpoint root hash is {len(self.root_hash)} bytes, want {_HASH_SIZE}"
            )
        for number, line in enumerate(self.extensions, start=1):
            _check_line(line, f"extension line {number}")
            if not line:  # §"Note text" 4: extension lines MUST be non-empty.
                raise ValueError(f"checkpoint extension line {number} is empty")

    def to_text(self) -> str:
        """The note text: origin, decimal size, base64 root hash, extensions; each ends in LF."""
        root = binascii.b2a_base64(self.root_hash, newline=False).decode()
        lines = (self.origin, str(self.size), root, *self.extensions)
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (the signed part of the note, ending in newline)."""
        if not text.endswith("\n"):
            raise ValueError("checkpoint text must end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ValueError(
                f"checkpoint has {len(lines)} line(s); want origin, tree size and root hash"
            )
        origin, size_text, hash_text, *extensions = lines
        if not origin:
            raise ValueError("checkpoint origin line is empty")
        # §"Note text" 2: ASCII decimal, no leading zeroes unless the tree is empty.
        if not _DECIMAL.fullmatch(size_text):
            raise ValueError(f"checkpoint tree size {size_text!r} is not a decimal number")
        if size_text != "0" and size_text.startswith("0"):
            raise ValueError(f"checkpoint tree size {size_text!r} has a leading zero")
        if len(size_text) > len(str(MAX_TREE_SIZE)) or int(size_text) > MAX_TREE_SIZE:
            raise ValueError(f"checkpoint tree size {size_text} is larger than 2**63-1")
        # §"Note text" 3: standard base64 (RFC 4648 §4) of the 32-byte root.
        try:
            root_hash = binascii.a2b_base64(hash_text, strict_mode=True)
        except ValueError:
            raise ValueError(f"checkpoint root hash {hash_text!r} is not valid base64") from None
        if len(root_hash) != _HASH_SIZE:
            raise ValueError(f"checkpoint root hash is {len(root_hash)} bytes, want {_HASH_SIZE}")
        return cls(origin, int(size_text), root_hash, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> bytes:
    """The signed note of ``cp`` (§"Signatures": the key name SHOULD be the origin)."""
    return sign(cp.to_text(), [signer])


def open_checkpoint(note: bytes, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify ``note``'s signature by ``verifier`` and return its checkpoint.

    ``origin`` is the origin line the caller expects; by default the verifier's key name, as
    §"Signatures" recommends (sum.golang.org is an exception: pass "go.sum database tree").
    Other signatures (witness cosignatures, rotated keys) are ignored. Everything wrong with the
    note, including a signed text that is not a checkpoint, raises VerificationError.
    """
    opened = open_note(note, [verifier])
    try:
        cp = Checkpoint.parse(opened.text)
    except ValueError as exc:
        raise VerificationError(f"signed note is not a checkpoint: {exc}") from exc
    want = verifier.name if origin is None else origin
    if cp.origin != want:
        raise VerificationError(
            f"checkpoint is for another log: its origin line is {cp.origin!r}, the key's log is "
            f"{want!r}"
        )
    return cp


def _check_line(value: str, what: str) -> None:
    """A line of note text: no newline and no other character a signed note forbids."""
    for ch in value:
        if ch < " ":
            raise ValueError(f"checkpoint {what} contains control character U+{ord(ch):04X}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"checkpoint {what} is not valid UTF-8") from None
