"""Tamper-evident Merkle ledger: RFC 9162 hashing, C2SP tlog-tiles, checkpoints and notes.

Imports nothing of the rest of the project (see DESIGN.md, direction of imports).
"""

from auditmesh.ledger.errors import VerificationError

__all__ = ["VerificationError"]
