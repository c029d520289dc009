"""C2SP tlog-proof: the spec example, transparency-dev/formats encodings, end-to-end checks."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.ledger import merkle
from auditmesh.ledger.checkpoint import Checkpoint, sign_checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Signer, Verifier, generate_key, sign
from auditmesh.ledger.tlogproof import (
    HEADER,
    MAX_PROOF_HASHES,
    ProofMismatch,
    TlogProof,
    verify_tlog_proof,
    verify_tlog_proof_hash,
)

SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)

# The example in https://c2sp.org/tlog-proof (C2SP/C2SP tlog-proof.md at commit 5ba5ee83). Its
# signatures are elided with "[...]", so only the proof format can be checked, not the note.
SPEC_EXAMPLE = """\
c2sp.org/tlog-proof@v1
extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ
index 73894
gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=
EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=
RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=
AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=

example.com/fancylog
109482
sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=

— example.com/fancylog hI2DJw[...]1roloI=
— witness1.example mJirIklj[...]qY9v2B/5bg==
— witness2.example TnKKVHLX[...]xwYwrSjgow==
— witness3.example S4X82uH5[...]3oEcROGLFQ==
""".encode()

SIGNER = Signer.from_skey(generate_key("example.com/auditmesh", bytes([3]) * 32)[0])
VERIFIER = SIGNER.verifier()
ENTRIES = [f"event {i}".encode() for i in range(13)]
LEAVES = [merkle.leaf_hash(e) for e in ENTRIES]


def _proof_for(index: int, size: int = len(ENTRIES), extra: bytes | None = None) -> TlogProof:
    cp = Checkpoint(SIGNER.name, size, merkle.root(LEAVES[:size]))
    path = merkle.inclusion_proof(index, size, LEAVES[:size])
    return TlogProof(index, tuple(path), sign_checkpoint(cp, SIGNER), extra)


# --- Format -------------------------------------------------------------------------------------


def test_spec_example_parses_and_re_encodes_identically() -> None:
    proof = TlogProof.parse(SPEC_EXAMPLE)
    assert proof.index == 73894
    assert len(proof.proof) == 5
    assert proof.proof[0] == base64.b64decode("gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=")
    assert proof.extra is not None and proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert proof.checkpoint_note.startswith(b"example.com/fancylog\n109482\n")
    assert proof.checkpoint_note.endswith("— witness3.example S4X82uH5[...]3oEcROGLFQ==\n".encode())
    assert proof.encode() == SPEC_EXAMPLE


# transparency-dev/formats proof/tlog_proof_test.go (commit 0b850f1a) TestMarshal: the hashes
# are SHA-256("hash1") and SHA-256("hash2"), the checkpoints placeholder text.
_H1 = hashlib.sha256(b"hash1").digest()
_H2 = hashlib.sha256(b"hash2").digest()
_B1, _B2 = base64.b64encode(_H1), base64.b64encode(_H2)


@pytest.mark.parametrize(
    ("proof", "want"),
    [
        (
            TlogProof(5, (_H1, _H2), b"test checkpoint\n"),
            b"c2sp.org/tlog-proof@v1\nindex 5\n" + _B1 + b"\n" + _B2 + b"\n\ntest checkpoint\n",
        ),
        (
            TlogProof(10, (_H1,), b"checkpoint data\n", b"extra information"),
            b"c2sp.org/tlog-proof@v1\nextra "
            + base64.b64encode(b"extra information")
            + b"\nindex 10\n"
            + _B1
            + b"\n\ncheckpoint data\n",
        ),
        (TlogProof(0, (), b"checkpoint\n"), b"c2sp.org/tlog-proof@v1\nindex 0\n\ncheckpoint\n"),
    ],
    ids=["no-extra", "extra", "no-hashes"],
)
def test_encodings_match_transparency_dev(proof: TlogProof, want: bytes) -> None:
    assert proof.encode() == want
    assert TlogProof.parse(want) == proof


def test_empty_extra_is_kept_distinct_from_no_extra() -> None:
    proof = TlogProof(1, (_H1,), b"cp\n", b"")
    assert proof.encode().startswith(HEADER.encode() + b"\nextra \nindex 1\n")
    assert TlogProof.parse(proof.encode()).extra == b""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # transparency-dev/formats TestUnmarshalErrors cases.
        (b"wrong-header\nindex 0\n\ncheckpoint\n", "must start with the line"),
        (
            b"c2sp.org/tlog-proof@v1\nextra !!notbase64!!\nindex 0\n\ncp\n",
            "extra data on line 2 is not",
        ),
        (b"c2sp.org/tlog-proof@v1\n\n\ncheckpoint\n", "line 2 must be 'index N'"),
        (b"c2sp.org/tlog-proof@v1\nindex notanumber\n\ncp\n", "on line 2 is not a decimal"),
        (b"c2sp.org/tlog-proof@v1\nindex -5\n\ncp\n", "is not a decimal number"),
        (b"c2sp.org/tlog-proof@v1\nindex 0\n!!notbase64!!\n\ncp\n", "hash on line 3 is not"),
        (
            b"c2sp.org/tlog-proof@v1\nindex 0\n" + base64.b64encode(bytes(64)) + b"\n\ncp\n",
            "hash on line 3 is 64 bytes, want 32",
        ),
        # Ours.
        (b"", "ends before the header line"),
        (b"c2sp.org/tlog-proof@v1", "ends before the header line"),
        (b"c2sp.org/tlog-proof@v2\nindex 0\n\ncp\n", "must start with the line"),
        (b"c2sp.org/tlog-proof@v1\r\nindex 0\n\ncp\n", "must start with the line"),
        (b"c2sp.org/tlog-proof@v1\nindex 0", "ends before the index line"),
        (b"c2sp.org/tlog-proof@v1\nextra \n", "ends before the index line"),
        (b"c2sp.org/tlog-proof@v1\nextra\nindex 0\n\ncp\n", "line 2 must be 'index N'"),
        (b"c2sp.org/tlog-proof@v1\nindex 07\n\ncp\n", "'07' on line 2 has a leading zero"),
        (b"c2sp.org/tlog-proof@v1\nindex 9223372036854775808\n\ncp\n", "larger than 2**63-1"),
        (b"c2sp.org/tlog-proof@v1\nindex  7\n\ncp\n", "is not a decimal number"),
        (b"c2sp.org/tlog-proof@v1\nindex 7\r\n\ncp\n", "is not a decimal number"),
        (b"c2sp.org/tlog-proof@v1\nindex 7\n" + _B1 + b"\n", "ends before the empty line"),
        (b"c2sp.org/tlog-proof@v1\nindex 7\n" + _B1 + b"\n\n", "ends before the checkpoint"),
        (b"c2sp.org/tlog-proof@v1\nindex 7\n" + _B1[:-1] + b"\n\ncp\n", "line 3 is not valid"),
        (
            b"c2sp.org/tlog-proof@v1\nindex 7\n" + (_B1 + b"\n") * 64 + b"\ncp\n",
            "more than 63 proof hashes",
        ),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        TlogProof.parse(data)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, (), b"cp"), "outside 0..2**63-1"),
        ((1 << 63, (), b"cp"), "outside 0..2**63-1"),
        ((0, (b"short",), b"cp"), "hash 1 is 5 bytes"),
        ((0, (_H1,) * (MAX_PROOF_HASHES + 1), b"cp"), "64 proof hashes"),
        ((0, (), b""), "checkpoint is empty"),
    ],
)
def test_constructor_validates(args: tuple[int, tuple[bytes, ...], bytes], message: str) -> None:
    with pytest.raises(ValueError) as info:
        TlogProof(*args)
    assert message in str(info.value)


# --- Verification --------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(ENTRIES)))
def test_every_entry_verifies_through_the_text_format(index: int) -> None:
    proof = TlogProof.parse(_proof_for(index, extra=b"ctx").encode())
    cp = verify_tlog_proof(proof, ENTRIES[index], VERIFIER)
    assert (cp.origin, cp.size, cp.root_hash) == (SIGNER.name, 13, merkle.root(LEAVES))


def test_proof_against_a_smaller_checkpoint() -> None:
    cp = verify_tlog_proof(_proof_for(4, size=5), ENTRIES[4], VERIFIER)
    assert cp.size == 5


def test_wrong_leaf_data_fails() -> None:
    with pytest.raises(VerificationError, match="does not lead to the root"):
        verify_tlog_proof(_proof_for(3), ENTRIES[4], VERIFIER)


def test_wrong_index_fails() -> None:
    good = _proof_for(3)
    moved = TlogProof(2, good.proof, good.checkpoint_note)
    with pytest.raises(VerificationError):
        verify_tlog_proof(moved, ENTRIES[3], VERIFIER)


def test_index_outside_the_tree_fails() -> None:
    good = _proof_for(3, size=4)
    with pytest.raises(VerificationError, match="not in a tree of size 4"):
        verify_tlog_proof(TlogProof(4, good.proof, good.checkpoint_note), ENTRIES[4], VERIFIER)


def test_tampered_proof_hash_fails() -> None:
    good = _proof_for(6)
    bad = (bytes(32),) + good.proof[1:]
    with pytest.raises(VerificationError, match="does not lead to the root"):
        verify_tlog_proof(TlogProof(6, bad, good.checkpoint_note), ENTRIES[6], VERIFIER)


def test_truncated_proof_fails() -> None:
    good = _proof_for(6)
    with pytest.raises(VerificationError):
        verify_tlog_proof(TlogProof(6, good.proof[:-1], good.checkpoint_note), ENTRIES[6], VERIFIER)


def test_checkpoint_by_another_key_fails() -> None:
    other = Verifier.from_vkey(generate_key("example.com/auditmesh", bytes(32))[1])
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        verify_tlog_proof(_proof_for(1), ENTRIES[1], other)


def test_checkpoint_for_another_origin_fails() -> None:
    with pytest.raises(VerificationError, match="another log"):
        verify_tlog_proof(_proof_for(1), ENTRIES[1], VERIFIER, origin="example.com/other")


def test_forged_checkpoint_root_fails() -> None:
    good = _proof_for(2)
    forged_text = Checkpoint(SIGNER.name, 13, bytes(32)).to_text().encode()
    sigs = good.checkpoint_note.split(b"\n\n", 1)[1]
    forged = TlogProof(2, good.proof, forged_text + b"\n" + sigs)
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_tlog_proof(forged, ENTRIES[2], VERIFIER)


def test_a_leaf_hash_verifies_as_its_data_does() -> None:
    proof = _proof_for(5)
    assert verify_tlog_proof_hash(proof, LEAVES[5], VERIFIER) == verify_tlog_proof(
        proof, ENTRIES[5], VERIFIER
    )


def test_only_the_inclusion_step_raises_proof_mismatch() -> None:
    """A caller tells "the entry or the proof differs" from "the checkpoint is not the log's"
    by the type; the message is the Merkle verifier's, unchanged."""
    with pytest.raises(ProofMismatch, match="does not lead to the root; at leaf 3 of tree size"):
        verify_tlog_proof(_proof_for(3), ENTRIES[4], VERIFIER)
    good = _proof_for(3, size=4)
    with pytest.raises(ProofMismatch, match="not in a tree of size 4"):
        verify_tlog_proof(TlogProof(4, good.proof, good.checkpoint_note), ENTRIES[4], VERIFIER)
    other = Verifier.from_vkey(generate_key("example.com/auditmesh", bytes(32))[1])
    with pytest.raises(VerificationError) as info:
        verify_tlog_proof(_proof_for(1), ENTRIES[1], other)
    assert not isinstance(info.value, ProofMismatch)


@pytest.mark.parametrize("extra", [None, b"ctx"])
def test_checkpoint_line_is_where_the_note_starts(extra: bytes | None) -> None:
    proof = _proof_for(6, extra=extra)
    lines = proof.encode().split(b"\n")
    assert lines[proof.checkpoint_line - 1] == SIGNER.name.encode()
    assert lines[proof.checkpoint_line - 2] == b""


def test_witness_cosignatures_ride_along_verbatim() -> None:
    witness = Signer.from_skey(generate_key("witness.example", bytes([5]) * 32)[0])
    cp = Checkpoint(SIGNER.name, 13, merkle.root(LEAVES))
    note = sign(cp.to_text(), [SIGNER, witness])
    proof = TlogProof(9, tuple(merkle.inclusion_proof(9, 13, LEAVES)), note)
    parsed = TlogProof.parse(proof.encode())
    assert parsed.checkpoint_note == note
    assert verify_tlog_proof(parsed, ENTRIES[9], VERIFIER) == cp


# --- Properties ---------------------------------------------------------------------------------

hashes = st.binary(min_size=32, max_size=32)
proofs = st.builds(
    TlogProof,
    index=st.integers(min_value=0, max_value=(1 << 63) - 1),
    proof=st.lists(hashes, max_size=MAX_PROOF_HASHES).map(tuple),
    checkpoint_note=st.binary(min_size=1, max_size=200),
    extra=st.none() | st.binary(max_size=100),
)


@SETTINGS
@given(proof=proofs)
def test_encode_parse_round_trip(proof: TlogProof) -> None:
    assert TlogProof.parse(proof.encode()) == proof


@SETTINGS
@given(data=st.binary(max_size=300))
def test_parse_only_raises_value_error(data: bytes) -> None:
    for candidate in (data, HEADER.encode() + b"\n" + data, SPEC_EXAMPLE[:120] + data):
        try:
            TlogProof.parse(candidate)
        except ValueError:
            pass


@SETTINGS
@given(pos=st.integers(min_value=0, max_value=2000), insert=st.binary(max_size=3))
def test_mutated_proofs_never_verify_wrongly(pos: int, insert: bytes) -> None:
    encoded = _proof_for(7).encode()
    pos %= len(encoded) + 1
    mutated = encoded[:pos] + insert + encoded[pos + 1 :]
    try:
        proof = TlogProof.parse(mutated)
        verify_tlog_proof(proof, ENTRIES[7], VERIFIER)
    except (ValueError, VerificationError):
        return
    # Only mutations that change nothing that is checked may pass (e.g. a no-op replacement).
    assert proof.index == 7 and proof.proof == _proof_for(7).proof
