"""C2SP tlog-proof: a self-contained, offline-verifiable proof that one event is in the ledger.

Place in the house: the server and CLI hand these out for single events (evidence for auditors,
"transparent signatures"); anyone holding the event's canonical bytes and the log's verifier key
checks them with :func:`verify_tlog_proof`. Format per https://c2sp.org/tlog-proof §"Format",
verification per §"Verifying a tlog proof". Pure functions over bytes, no I/O.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from auditmesh.ledger import merkle
from auditmesh.ledger.checkpoint import MAX_TREE_SIZE, Checkpoint, open_checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier

__all__ = [
    "HEADER",
    "MAX_PROOF_HASHES",
    "ProofMismatch",
    "TlogProof",
    "verify_tlog_proof",
    "verify_tlog_proof_hash",
]

HEADER = "c2sp.org/tlog-proof@v1"
# A tree of at most 2**63-1 leaves is at most 63 levels deep, so no inclusion proof is longer.
MAX_PROOF_HASHES = 63
_HASH_SIZE = 32
_DECIMAL = re.compile(rb"[0-9]+")


@dataclass(frozen=True, slots=True)
class TlogProof:
    """Entry index, RFC 6962 inclusion proof, the log's signed checkpoint note (verbatim, with
    any witness cosignatures) and optional unauthenticated extra data."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint_note: bytes
    extra: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "proof", tuple(self.proof))
        if not 0 <= self.index <= MAX_TREE_SIZE:
            raise ValueError(f"tlog-proof index {self.index} is outside 0..2**63-1")
        if len(self.proof) > MAX_PROOF_HASHES:
            raise ValueError(
                f"tlog-proof has {len(self.proof)} proof hashes; at most {MAX_PROOF_HASHES}"
            )
        for number, node in enumerate(self.proof, start=1):
            if len(node) != _HASH_SIZE:
                raise ValueError(f"tlog-proof hash {number} is {len(node)} bytes, want 32")
        if not self.checkpoint_note:
            raise ValueError("tlog-proof checkpoint is empty")

    def encode(self) -> bytes:
        """The proof text (§"Format"); the checkpoint note is appended byte for byte."""
        lines = [HEADER.encode()]
        if self.extra is not None:
            lines.append(b"extra " + _b64(self.extra))
        lines.append(b"index %d" % self.index)
        lines.extend(_b64(node) for node in self.proof)
        return b"".join(line + b"\n" for line in lines) + b"\n" + self.checkpoint_note

    @property
    def checkpoint_line(self) -> int:
        """The line of the encoded proof on which the checkpoint starts (counted from 1):
        after the header, any extra line, the index line, the hashes and the empty line."""
        return 4 + (self.extra is not None) + len(self.proof)

    @classmethod
    def parse(cls, data: bytes) -> TlogProof:
        """Parse a proof; ValueError says which line is wrong. The checkpoint is not opened."""
        lines = _Lines(data)
        # §"Format": the first line MUST be the header.
        if lines.next("the header line") != HEADER.encode():
            raise ValueError(f"tlog-proof must start with the line {HEADER!r}")
        # The second line MAY be "extra <base64>".
        line = lines.next("the index line")
        extra = None
        if line.startswith(b"extra "):
            extra = _b64decode(line[len(b"extra ") :], f"extra data on line {lines.number}")
            line = lines.next("the index line")
        # Then "index <decimal>", no leading zeroes unless the index is 0.
        if not line.startswith(b"index "):
            raise ValueError(f"tlog-proof line {lines.number} must be 'index N'")
        digits, at = line[len(b"index ") :], f"on line {lines.number}"
        if not _DECIMAL.fullmatch(digits):
            raise ValueError(f"tlog-proof index {_show(digits)} {at} is not a decimal number")
        if digits != b"0" and digits.startswith(b"0"):
            raise ValueError(f"tlog-proof index {_show(digits)} {at} has a leading zero")
        if len(digits) > len(str(MAX_TREE_SIZE)) or int(digits) > MAX_TREE_SIZE:
            raise ValueError(f"tlog-proof index {_show(digits)} {at} is larger than 2**63-1")
        # Zero or more base64 SHA-256 hashes, leaf's sibling first, then an empty line.
        proof: list[bytes] = []
        while line := lines.next("the empty line before the checkpoint"):
            if len(proof) == MAX_PROOF_HASHES:
                raise ValueError(f"tlog-proof has more than {MAX_PROOF_HASHES} proof hashes")
            node = _b64decode(line, f"proof hash on line {lines.number}")
            if len(node) != _HASH_SIZE:
                raise ValueError(
                    f"tlog-proof hash on line {lines.number} is {len(node)} bytes, want 32"
                )
            proof.append(node)
        # The checkpoint follows verbatim.
        note = lines.rest()
        if not note:
            raise ValueError("tlog-proof ends before the checkpoint")
        return cls(int(digits), tuple(proof), note, extra)


class ProofMismatch(VerificationError):
    """Step 4 failed: the checkpoint verifies, but the inclusion proof does not bind the leaf
    to its root at the proof's index (the entry or the proof differs from what the log
    signed, or they are of different entries). The message is merkle.verify_inclusion's."""


def verify_tlog_proof(
    proof: TlogProof, leaf_data: bytes, verifier: Verifier, origin: str | None = None
) -> Checkpoint:
    """Check that ``leaf_data`` is entry ``proof.index`` of the log ``verifier`` signs for.

    §"Verifying a tlog proof": (1) leaf hash = RFC 6962 ``SHA-256(0x00 ‖ leaf_data)``; then
    as :func:`verify_tlog_proof_hash`.
    """
    return verify_tlog_proof_hash(proof, merkle.leaf_hash(leaf_data), verifier, origin)


def verify_tlog_proof_hash(
    proof: TlogProof, leaf_hash: bytes, verifier: Verifier, origin: str | None = None
) -> Checkpoint:
    """Check that the leaf of ``leaf_hash`` is entry ``proof.index`` of ``verifier``'s log.

    §"Verifying a tlog proof" (2) the checkpoint's origin is ``origin`` (default: the key
    name) and the log signed it; (3) witness cosignatures are ignored here (policy belongs
    to the caller); (4) the inclusion proof binds the leaf to the checkpoint's root. Returns
    the checkpoint; raises VerificationError (UntrustedNote when the key signed no line of
    the checkpoint, ProofMismatch when step 4 fails). The ``extra`` data is not
    authenticated and not looked at.
    """
    checkpoint = open_checkpoint(proof.checkpoint_note, verifier, origin)
    try:
        merkle.verify_inclusion(
            leaf_hash, proof.index, checkpoint.size, proof.proof, checkpoint.root_hash
        )
    except VerificationError as exc:
        raise ProofMismatch(
            exc.message, expected=exc.expected, computed=exc.computed, where=exc.where
        ) from None
    return checkpoint


class _Lines:
    """Newline-terminated lines of a byte string, counted from 1."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.number = 0

    def next(self, wanted: str) -> bytes:
        end = self._data.find(b"\n", self._pos)
        if end < 0:
            raise ValueError(f"tlog-proof ends before {wanted} (line {self.number + 1})")
        line = self._data[self._pos : end]
        self._pos = end + 1
        self.number += 1
        return line

    def rest(self) -> bytes:
        return self._data[self._pos :]


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def _b64decode(text: bytes, what: str) -> bytes:
    """RFC 4648 §4 standard base64 with padding (the spec's encoding)."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise ValueError(f"tlog-proof {what} is not valid base64") from None


def _show(value: bytes) -> str:
    return repr(value[:40].decode("ascii", "replace"))
