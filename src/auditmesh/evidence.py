"""Evidence bundles: chosen ledger entries with their proofs, as one zip.

Place in the house: over `ledger/bundle.py`, for `auditmesh bundle create`, `auditmesh
findings --bundle` and the console's `POST /console/api/bundle`. The format is the one
`auditmesh bundle verify` checks offline: each entry's exact leaf bytes and its C2SP
tlog-proof against the latest signed checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditmesh.datadir import Ledger
from auditmesh.ledger.bundle import BundleEntry, create_bundle
from auditmesh.ledger.tlogproof import TlogProof

MAX_ENTRIES = 1000


class EvidenceError(ValueError):
    """The entries cannot be bundled; the message says why."""


def evidence_bundle(ledger: Ledger, indices: Sequence[int]) -> tuple[bytes, int]:
    """The zip of these entries (ledger order, each once) and the tree size they are proven at."""
    chosen = sorted(set(indices))
    if not chosen:
        raise EvidenceError("name at least one ledger index")
    if len(chosen) > MAX_ENTRIES:
        raise EvidenceError(f"{len(chosen)} entries; a bundle holds at most {MAX_ENTRIES}")
    latest = ledger.store.latest_checkpoint()
    if latest is None:
        raise EvidenceError("the log has no checkpoint yet; try again in a second")
    if chosen[0] < 0:
        raise EvidenceError(f"{chosen[0]} is not a ledger index (they count from 0)")
    if chosen[-1] >= latest.size:
        raise EvidenceError(
            f"entry {chosen[-1]} is not covered by the latest signed checkpoint yet (size "
            f"{latest.size}); the server signs one while the log grows: try again shortly"
        )
    checkpoint = ledger.log.open_checkpoint(latest.note)
    entries = []
    for index in chosen:
        (_, data), *_ = ledger.store.entries(index, index + 1)
        proof = TlogProof(index, tuple(ledger.log.inclusion_proof(index, latest.size)), latest.note)
        entries.append(BundleEntry(index, data, proof))
    return create_bundle(entries, latest.note, checkpoint, ledger.vkey), latest.size
