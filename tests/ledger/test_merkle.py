"""Tests for auditmesh.ledger.merkle: RFC 9162 §2.1 known answers, a from-the-RFC reference
implementation, and hypothesis properties of proofs and their verifiers."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.merkle import (
    EMPTY_ROOT,
    HashSource,
    LeafHashes,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def unhex(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


REF = load("rfc6962_reference_tree.json")
REF_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in REF["leaf_inputs"]]


# A reference implementation written straight from the RFC 9162 §2.1 definitions, recursive and
# slow, to cross-check the iterative, HashSource-driven code.
def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = 1
    while k * 2 < len(d):
        k *= 2
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], whole: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if whole else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], whole), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


# A few hundred distinct leaves, their source and the root of every prefix (from TreeBuilder, an
# algorithm independent of the proof code).
MAX = 300
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX)]
SOURCE = LeafHashes(LEAVES)


@cache
def roots() -> list[bytes]:
    builder = TreeBuilder()
    out = [builder.root()]
    for h in LEAVES:
        builder.append(h)
        out.append(builder.root())
    return out


# --- hashing and known answers --------------------------------------------------------------


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


def test_reference_node_hashes() -> None:
    source = LeafHashes(REF_LEAVES)
    for level, hashes in enumerate(REF["node_hashes"]):
        for index, expected in enumerate(unhex(hashes)):
            assert source.subtree_hash(level, index) == expected, (level, index)


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    expected = bytes.fromhex(REF["roots"][size])
    assert root(REF_LEAVES[:size]) == expected
    assert tree_root(LeafHashes(REF_LEAVES), size) == expected
    assert tree_root(LeafHashes(REF_LEAVES[:size]), size) == expected
    builder = TreeBuilder()
    builder.extend(REF_LEAVES[:size])
    assert builder.root() == expected


@pytest.mark.parametrize("case", REF["inclusion_proofs"], ids=lambda c: f"{c['index']}-{c['size']}")
def test_reference_inclusion_proofs(case: dict[str, Any]) -> None:
    index, size, expected = case["index"], case["size"], unhex(case["proof"])
    assert inclusion_proof(index, size, REF_LEAVES) == expected
    assert inclusion_proof(index, size, LeafHashes(REF_LEAVES)) == expected
    verify_inclusion(REF_LEAVES[index], index, size, expected, bytes.fromhex(REF["roots"][size]))


@pytest.mark.parametrize(
    "case", REF["consistency_proofs"], ids=lambda c: f"{c['size1']}-{c['size2']}"
)
def test_reference_consistency_proofs(case: dict[str, Any]) -> None:
    size1, size2, expected = case["size1"], case["size2"], unhex(case["proof"])
    assert consistency_proof(size1, size2, REF_LEAVES) == expected
    verify_consistency(
        size1,
        size2,
        expected,
        bytes.fromhex(REF["roots"][size1]),
        bytes.fromhex(REF["roots"][size2]),
    )


def test_accumulated_subtree_vectors() -> None:
    """draft-ietf-plants-merkle-tree-certs subtree vectors: every aligned subtree hash and every
    inclusion proof within them, for trees of up to 130 leaves, folded into one SHA-256."""
    vec = load("rfc6962_subtree_accumulated.json")
    n = vec["max_size"]
    leaves = [leaf_hash(bytes([i])) for i in range(n)]
    hashes, proofs = hashlib.sha256(), hashlib.sha256()
    for end in range(n + 1):
        for start in range(end + 1):
            length = end - start
            if start not in (0, end) and start % (1 << (length - 1).bit_length()):
                continue
            sub = leaves[start:end]
            hashes.update(f"[{start}, {end}) {root(sub).hex()}\n".encode())
            source = LeafHashes(sub)
            for index in range(start, end):
                path = inclusion_proof(index - start, length, source)
                line = f"{index} [{start}, {end})" + "".join(f" {h.hex()}" for h in path)
                proofs.update(f"{line}\n".encode())
    assert hashes.hexdigest() == vec["subtree_hash"]["sha256"]
    assert proofs.hexdigest() == vec["subtree_inclusion_proof"]["sha256"]


# Upstream probes whose outcome differs here, and why.
PROBE_DIVERGENCES = {
    # Roots are the 12 bytes "don't care 2": upstream never looks at them when the sizes are
    # equal; we reject any hash that is not 32 bytes.
    "testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": True,
}


@pytest.mark.parametrize(
    "probe", load("rfc6962_inclusion_probes.json")["probes"], ids=lambda p: p["file"][9:]
)
def test_inclusion_probes(probe: dict[str, Any]) -> None:
    want_error = PROBE_DIVERGENCES.get(probe["file"], probe["want_error"])
    args = (
        bytes.fromhex(probe["leaf_hash"]),
        probe["leaf_index"],
        probe["tree_size"],
        unhex(probe["proof"]),
        bytes.fromhex(probe["root"]),
    )
    if want_error:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(
    "probe", load("rfc6962_consistency_probes.json")["probes"], ids=lambda p: p["file"][9:]
)
def test_consistency_probes(probe: dict[str, Any]) -> None:
    want_error = PROBE_DIVERGENCES.get(probe["file"], probe["want_error"])
    args = (
        probe["size1"],
        probe["size2"],
        unhex(probe["proof"]),
        bytes.fromhex(probe["root1"]),
        bytes.fromhex(probe["root2"]),
    )
    if want_error:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- against the RFC reference ----------------------------------------------------------------


def test_roots_match_reference() -> None:
    for size in range(70):
        assert root(LEAVES[:size]) == ref_mth(LEAVES[:size]) == roots()[size]
        assert tree_root(SOURCE, size) == roots()[size]


def test_inclusion_proofs_match_reference() -> None:
    for size in range(1, 40):
        for index in range(size):
            assert inclusion_proof(index, size, SOURCE) == ref_path(index, LEAVES[:size])


def test_consistency_proofs_match_reference() -> None:
    for size2 in range(1, 40):
        for size1 in range(1, size2 + 1):
            expected = ref_subproof(size1, LEAVES[:size2], True)
            assert consistency_proof(size1, size2, SOURCE) == expected, (size1, size2)


# --- properties -----------------------------------------------------------------------------


def flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX))
    return size, draw(st.integers(0, size - 1))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(st.integers(0, MAX))
    return draw(st.integers(0, size2)), size2


@settings(max_examples=300, deadline=None)
@given(tree_and_index())
def test_inclusion_proofs_verify(case: tuple[int, int]) -> None:
    size, index = case
    proof = inclusion_proof(index, size, SOURCE)
    verify_inclusion(LEAVES[index], index, size, proof, roots()[size])


@settings(max_examples=300, deadline=None)
@given(tree_and_index(), st.integers(0, 1 << 16), st.integers(0, 1 << 16), st.integers(0, 6))
def test_tampered_inclusion_fails(case: tuple[int, int], pick: int, bit: int, how: int) -> None:
    size, index = case
    proof = inclusion_proof(index, size, SOURCE)
    leaf, r = LEAVES[index], roots()[size]
    if how == 0 and proof:
        proof[pick % len(proof)] = flip(proof[pick % len(proof)], bit)
    elif how == 1:
        leaf = flip(leaf, bit)
    elif how == 2:
        r = flip(r, bit)
    elif how == 3:
        index = (index + 1 + pick % (size + 1)) % (size + 2)  # any other index, maybe >= size
        if index == case[1]:
            index = size
    elif how == 4:
        # Another tree size, with that tree's genuine root: an inclusion proof alone does not
        # bind the size (leaf 0 of 3 and of 4 hash alike), the signed root does.
        other = pick % (MAX + 1)
        size = other if other != size else (size + 1) % (MAX + 1)
        r = roots()[size]
    elif how == 5:
        proof = proof[:-1] if proof else [LEAVES[0]]
    else:
        proof = [*proof, LEAVES[pick % MAX]]
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, r)


@settings(max_examples=300, deadline=None)
@given(two_sizes())
def test_consistency_proofs_verify(case: tuple[int, int]) -> None:
    size1, size2 = case
    proof = consistency_proof(size1, size2, SOURCE)
    verify_consistency(size1, size2, proof, roots()[size1], roots()[size2])


@settings(max_examples=300, deadline=None)
@given(two_sizes(), st.integers(0, 1 << 16), st.integers(0, 1 << 16), st.integers(0, 6))
def test_tampered_consistency_fails(case: tuple[int, int], pick: int, bit: int, how: int) -> None:
    size1, size2 = case
    proof = consistency_proof(size1, size2, SOURCE)
    root1, root2 = roots()[size1], roots()[size2]
    if how == 0 and proof:
        proof[pick % len(proof)] = flip(proof[pick % len(proof)], bit)
    elif how == 1:
        root1 = flip(root1, bit)
    elif how == 2 and size1 > 0:  # the empty tree is a prefix of every tree, whatever its root
        root2 = flip(root2, bit)
    elif how == 3:  # other sizes, with those trees' genuine roots
        other = pick % (MAX + 1)
        size1 = other if other != size1 else (size1 + 1) % (MAX + 1)
        root1 = roots()[size1]
    elif how == 4 and size1 > 0:
        other = pick % (MAX + 1)
        size2 = other if other != size2 else (size2 + 1) % (MAX + 1)
        root2 = roots()[size2]
    elif how == 5 and proof:
        proof = proof[:-1]
    else:
        proof = [*proof, LEAVES[pick % MAX]]
    # Moving an empty proof to size1 = 0 or size1 = size2 makes a true claim, not a tampered one.
    assume(
        not (
            0 <= size1 <= size2 <= MAX
            and proof == consistency_proof(size1, size2, SOURCE)
            and (root1, root2) == (roots()[size1], roots()[size2])
        )
    )
    with pytest.raises(VerificationError):
        verify_consistency(size1, size2, proof, root1, root2)


# --- edge cases and errors ------------------------------------------------------------------


def test_empty_and_single_leaf_trees() -> None:
    assert root([]) == EMPTY_ROOT
    assert tree_root(LeafHashes([]), 0) == EMPTY_ROOT
    assert inclusion_proof(0, 1, LEAVES) == []
    verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    assert consistency_proof(0, 0, LEAVES) == []
    assert consistency_proof(0, 5, LEAVES) == []
    assert consistency_proof(5, 5, LEAVES) == []
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 7, [], EMPTY_ROOT, roots()[7])
    verify_consistency(7, 7, [], roots()[7], roots()[7])


@pytest.mark.parametrize(
    ("index", "size", "message"),
    [(-1, 3, "negative"), (0, -1, "negative"), (3, 3, "not in a tree"), (0, 0, "not in a tree")],
)
def test_inclusion_proof_bad_arguments(index: int, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        inclusion_proof(index, size, LEAVES)


def test_proof_arguments_checked_against_source() -> None:
    with pytest.raises(ValueError, match="exceeds the 3 leaf hashes"):
        inclusion_proof(0, 4, LEAVES[:3])
    with pytest.raises(ValueError, match="exceeds the 3 leaf hashes"):
        consistency_proof(1, 4, LEAVES[:3])
    with pytest.raises(TypeError, match="not bytes"):
        inclusion_proof(0, 1, b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="not a complete subtree"):
        inclusion_proof(0, 4, LeafHashes(LEAVES[:3]))
    with pytest.raises(IndexError):
        LeafHashes(LEAVES[:4]).subtree_hash(-1, 0)
    with pytest.raises(ValueError, match="negative"):
        tree_root(SOURCE, -1)


@pytest.mark.parametrize(
    ("size1", "size2", "message"),
    [(5, 4, "larger than"), (-1, 4, "negative"), (1, -4, "negative")],
)
def test_consistency_proof_bad_arguments(size1: int, size2: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        consistency_proof(size1, size2, LEAVES)


def test_verify_inclusion_errors_carry_values() -> None:
    proof = inclusion_proof(3, 10, SOURCE)
    with pytest.raises(VerificationError) as info:
        verify_inclusion(LEAVES[3], 3, 10, proof, roots()[9])
    assert info.value.expected == roots()[9]
    assert isinstance(info.value.computed, bytes) and info.value.computed == roots()[10]
    with pytest.raises(VerificationError, match="wrong number") as info:
        verify_inclusion(LEAVES[3], 3, 10, proof[:-1], roots()[10])
    assert (info.value.expected, info.value.computed) == (len(proof), len(proof) - 1)
    with pytest.raises(VerificationError, match="not in a tree"):
        verify_inclusion(LEAVES[3], 10, 10, proof, roots()[10])
    with pytest.raises(VerificationError, match="negative"):
        verify_inclusion(LEAVES[3], -1, 10, proof, roots()[10])
    with pytest.raises(VerificationError, match="leaf hash is not a 32-byte"):
        verify_inclusion(LEAVES[3][:31], 3, 10, proof, roots()[10])
    with pytest.raises(VerificationError, match="root is not a 32-byte"):
        verify_inclusion(LEAVES[3], 3, 10, proof, roots()[10] + b"\x00")
    with pytest.raises(VerificationError, match=r"proof\[1\] is not a 32-byte"):
        verify_inclusion(LEAVES[3], 3, 10, [proof[0], proof[1][:16], *proof[2:]], roots()[10])


def test_verify_consistency_edge_cases() -> None:
    r5, r9 = roots()[5], roots()[9]
    proof = consistency_proof(5, 9, SOURCE)
    with pytest.raises(VerificationError, match="larger") as info:
        verify_consistency(9, 5, proof, r9, r5)
    assert info.value.computed == 9
    with pytest.raises(VerificationError, match="different roots"):
        verify_consistency(5, 5, [], r5, r9)
    with pytest.raises(VerificationError, match="wrong number"):
        verify_consistency(5, 5, [r5], r5, r5)
    with pytest.raises(VerificationError, match="wrong number"):
        verify_consistency(0, 5, [r5], EMPTY_ROOT, r5)
    with pytest.raises(VerificationError, match="empty tree has another root"):
        verify_consistency(0, 5, [], r5, r5)
    with pytest.raises(VerificationError, match="empty tree has another root"):
        verify_consistency(0, 0, [], r5, r5)
    with pytest.raises(VerificationError, match="wrong number"):
        verify_consistency(5, 9, [], r5, r9)
    with pytest.raises(VerificationError, match="root1 is not a 32-byte"):
        verify_consistency(5, 9, proof, r5[:8], r9)
    with pytest.raises(VerificationError, match="negative"):
        verify_consistency(-1, 9, proof, r5, r9)
    with pytest.raises(VerificationError, match="old root") as info:
        verify_consistency(5, 9, proof, roots()[4], r9)
    assert info.value.expected == roots()[4]
    with pytest.raises(VerificationError, match="new root") as info:
        verify_consistency(5, 9, proof, r5, roots()[8])
    assert info.value.expected == roots()[8]


# --- O(log n) reads -------------------------------------------------------------------------


class CountingSource:
    """A 10-million-leaf stand-in: arbitrary but fixed subtree hashes, and a read counter."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reads = 0

    def subtree_hash(self, level: int, index: int) -> bytes:
        assert level >= 0 and index >= 0 and (index + 1) << level <= self.size, (level, index)
        self.reads += 1
        return hashlib.sha256(f"{level}/{index}".encode()).digest()


@pytest.mark.parametrize("size", [10_000_000, 2**23, 2**23 + 1, 2**24 - 1])
def test_proofs_read_logarithmically_many_subtrees(size: int) -> None:
    source = CountingSource(size)
    bits = size.bit_length()
    checked: HashSource = source
    tree_root(checked, size)
    assert source.reads <= bits
    for index in (0, 1, size // 3, size - 2, size - 1):
        source.reads = 0
        assert len(inclusion_proof(index, size, checked)) <= bits
        assert source.reads <= 2 * bits + 1
    for size1 in (1, 2, 255, 256, size // 3, size - 1):
        source.reads = 0
        consistency_proof(size1, size, checked)
        assert source.reads <= 3 * bits + 3


# --- TreeBuilder ----------------------------------------------------------------------------


def test_tree_builder_roots_every_size() -> None:
    builder = TreeBuilder()
    assert builder.size == 0 and builder.root() == EMPTY_ROOT
    for n, h in enumerate(LEAVES, start=1):
        builder.append(h)
        assert builder.size == n
        assert len(builder.compact_range) == n.bit_count()
        if n < 80 or n % 37 == 0:
            assert builder.root() == root(LEAVES[:n])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 70), max_size=12))
def test_tree_builder_extend_matches_append(batches: list[int]) -> None:
    seen_extend: dict[tuple[int, int], bytes] = {}
    seen_append: dict[tuple[int, int], bytes] = {}
    levels = (0, 1, 3, 5)
    by_batch = TreeBuilder(
        on_complete=lambda lv, i, h: seen_extend.__setitem__((lv, i), h), levels=levels
    )
    one_by_one = TreeBuilder(
        on_complete=lambda lv, i, h: seen_append.__setitem__((lv, i), h), levels=levels
    )
    pos = 0
    for count in batches:
        chunk = LEAVES[pos : pos + count]
        by_batch.extend(chunk)
        for h in chunk:
            one_by_one.append(h)
        pos += len(chunk)
        assert by_batch.size == one_by_one.size == pos
        assert by_batch.compact_range == one_by_one.compact_range
        assert by_batch.root() == roots()[pos]
    assert seen_extend == seen_append
    expected = {(lv, i): SOURCE.subtree_hash(lv, i) for lv in levels for i in range(pos >> lv)}
    assert seen_append == expected


def test_tree_builder_reports_tile_level_subtrees() -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(3 * 256 + 5)]
    seen: list[tuple[int, int, bytes]] = []
    builder = TreeBuilder(on_complete=lambda lv, i, h: seen.append((lv, i, h)))
    builder.extend(leaves[:100])
    for h in leaves[100:]:
        builder.append(h)
    source = LeafHashes(leaves)
    assert seen == [(8, i, source.subtree_hash(8, i)) for i in range(3)]


def test_tree_builder_resume_from_compact_range() -> None:
    first = TreeBuilder()
    first.extend(LEAVES[:77])
    resumed = TreeBuilder.from_compact_range(first.size, first.compact_range)
    resumed.extend(LEAVES[77:200])
    assert resumed.root() == roots()[200]
    with pytest.raises(ValueError, match="has 3 compact-range hashes"):
        TreeBuilder.from_compact_range(7, first.compact_range[:2])
    with pytest.raises(ValueError, match="not 32"):
        TreeBuilder.from_compact_range(1, [b"short"])
    with pytest.raises(ValueError, match="negative"):
        TreeBuilder.from_compact_range(-1, [])


def test_tree_builder_rejects_bad_input() -> None:
    builder = TreeBuilder()
    with pytest.raises(ValueError, match="not 32"):
        builder.append(b"\x00" * 31)
    with pytest.raises(ValueError, match="not 32"):
        builder.extend([LEAVES[0], b"\x00" * 33])
    assert builder.size == 0
    with pytest.raises(ValueError, match="negative"):
        TreeBuilder(on_complete=lambda lv, i, h: None, levels=[-1])
