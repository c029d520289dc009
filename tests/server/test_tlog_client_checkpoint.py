"""client.py RemoteLog reading the checkpoint of a cosigned tlog-tiles log (C2SP signed-note)."""

from __future__ import annotations

import secrets
from base64 import b64encode

from auditmesh.ledger.note import Signature
from tests.server.test_tlog_client_interop import SpecLog, verified


def _cosigned(note: bytes, count: int, size: int) -> bytes:
    """`note` with `count` more signature lines, by keys unknown to the verifier, each of a
    `size`-byte signature (key ID first)."""
    lines = [
        Signature(f"witness{n}.example", 0, b64encode(secrets.token_bytes(4 + size)).decode())
        for n in range(count)
    ]
    return note + "".join(f"{sig.line}\n" for sig in lines).encode()


def test_a_checkpoint_with_sixteen_post_quantum_signatures_is_read() -> None:
    """signed-note §"Format": verifiers "MUST accept at least up to 16 signatures. Remember
    that post-quantum signatures can be up to nearly 5kB in size." The log's Ed25519
    signature and 15 cosignatures of 4,627 bytes (ML-DSA-87) make a note of ~93 kB."""
    log = SpecLog(10, 10)
    log.note = _cosigned(log.note, 15, 4627)
    assert len(log.note) > 64 * 1024
    assert verified(log) == 10
