"""Merkle-tree core of the ledger: RFC 9162 §2.1 hashing, proofs and their verifiers.

This is the pure bottom of the ledger: bytes in, bytes out, no I/O. ``log.py`` appends leaves,
``tiles.py`` stores the tree as C2SP tlog-tiles and serves it back through :class:`HashSource`,
``verify.py`` and ``bundle.py`` check what this module computes. Hashing is RFC 9162 §2.1.1
(identical to RFC 6962 §2.1): SHA-256, leaf ``0x00``, node ``0x01``, empty tree ``SHA-256("")``.

Proof generation reads the tree only through :class:`HashSource`, asking for roots of perfect,
aligned subtrees, and never more than O(log n) of them per proof: the incomplete subtrees on the
right edge that RFC 9162's recursion names are assembled from their perfect aligned parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from auditmesh.ledger.errors import VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "HashSource",
    "LeafHashes",
    "TreeBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

_sha256 = hashlib.sha256
LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = _sha256(b"").digest()
"""MTH({}) = SHA-256() — RFC 9162 §2.1.1, the root of the empty tree."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0)) — RFC 9162 §2.1.1."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])) — RFC 9162 §2.1.1."""
    return _sha256(_NODE_PREFIX + left + right).digest()


class HashSource(Protocol):
    """Read access to the roots of a tree's perfect, aligned subtrees.

    ``subtree_hash(level, index)`` is MTH(D[index·2^level : (index+1)·2^level]); level 0 holds
    the leaf hashes. A source raises a :class:`LookupError` for a subtree it does not have.
    """

    def subtree_hash(self, level: int, index: int) -> bytes: ...


class LeafHashes:
    """A :class:`HashSource` over an in-memory list of leaf hashes.

    The leaf hashes are snapshotted at construction. Interior levels are computed lazily, a
    whole level at a time, and kept, so any number of proofs cost O(n) hashing in total.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        leaves = leaf_hashes if isinstance(leaf_hashes, tuple) else tuple(leaf_hashes)
        self._levels: list[Sequence[bytes]] = [leaves]

    def __len__(self) -> int:
        return len(self._levels[0])

    def subtree_hash(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or (index + 1) << level > len(self._levels[0]):
            raise IndexError(
                f"subtree (level {level}, index {index}) is not a complete subtree of a tree "
                f"of {len(self._levels[0])} leaves"
            )
        levels = self._levels
        while len(levels) <= level:
            below = levels[-1]
            sha = _sha256
            levels.append(
                [
                    sha(_NODE_PREFIX + below[i] + below[i + 1]).digest()
                    for i in range(0, len(below) - 1, 2)
                ]
            )
        return levels[level][index]


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf hashes — RFC 9162 §2.1.1; EMPTY_ROOT for none."""
    level: Sequence[bytes] = leaf_hashes
    if not level:
        return EMPTY_ROOT
    sha = _sha256
    # Pairing neighbours level by level and lifting an odd last node unchanged builds exactly
    # the tree of §2.1.1's split at the largest power of two smaller than n.
    while len(level) > 1:
        paired = [
            sha(_NODE_PREFIX + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def _range_root(source: HashSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a non-empty range whose start is a multiple of a power of two no
    smaller than its length — every range RFC 9162 §2.1's recursion splits off has this form.

    The range decomposes into at most log2(n)+1 perfect aligned subtrees, largest first, and
    §2.1.1's split rule folds them right to left.
    """
    size = end - start
    parts: list[bytes] = []
    pos = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            parts.append(source.subtree_hash(level, pos >> level))
            pos += 1 << level
    acc = parts.pop()
    while parts:
        acc = node_hash(parts.pop(), acc)
    return acc


def tree_root(source: HashSource, size: int) -> bytes:
    """MTH(D[0:size]) read from ``source`` with at most log2(size)+1 subtree reads."""
    if size < 0:
        raise ValueError(f"tree size must not be negative, got {size}")
    if size == 0:
        return EMPTY_ROOT
    return _range_root(source, 0, size)


def _as_source(source: HashSource | Sequence[bytes], size: int) -> HashSource:
    if isinstance(source, bytes | bytearray | memoryview):
        raise TypeError("source must be a HashSource or a sequence of leaf hashes, not bytes")
    if isinstance(source, Sequence):
        if size > len(source):
            raise ValueError(f"tree size {size} exceeds the {len(source)} leaf hashes given")
        return LeafHashes(source)
    return source


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1) — RFC 9162 §2.1.1's k."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, size: int, source: HashSource | Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[0:size]) — RFC 9162 §2.1.3.1, ordered from the leaf's sibling upwards."""
    if index < 0 or size < 0:
        raise ValueError(f"index and size must not be negative, got index {index}, size {size}")
    if index >= size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    src = _as_source(source, size)
    # Walk §2.1.3.1's recursion top-down over D[start:start+n]; siblings come out root-first.
    path: list[bytes] = []
    start, n, m = 0, size, index
    while n > 1:
        k = _split(n)
        if m < k:
            # PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(_range_root(src, start + k, start + n))
            n = k
        else:
            # PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(src.subtree_hash(k.bit_length() - 1, start // k))
            start, n, m = start + k, n - k, m - k
    path.reverse()
    return path


def consistency_proof(size1: int, size2: int, source: HashSource | Sequence[bytes]) -> list[bytes]:
    """PROOF(size1, D[0:size2]) — RFC 9162 §2.1.4.1.

    Empty when ``size1 == size2`` and, following C2SP tlog-witness, when ``size1 == 0``.
    """
    if size1 < 0 or size2 < 0:
        raise ValueError(f"tree sizes must not be negative, got {size1} and {size2}")
    if size1 > size2:
        raise ValueError(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0 or size1 == size2:
        return []
    src = _as_source(source, size2)
    # SUBPROOF(m, D[start:start+n], b), walked top-down; nodes come out root-first.
    proof: list[bytes] = []
    start, n, m, whole = 0, size2, size1, True
    while m != n:
        k = _split(n)
        if m <= k:
            # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            proof.append(_range_root(src, start + k, start + n))
            n = k
        else:
            # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            proof.append(src.subtree_hash(k.bit_length() - 1, start // k))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        proof.append(_range_root(src, start, start + m))
    proof.reverse()
    return proof


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise VerificationError(
            f"{what} is not bytes", expected="bytes", computed=type(value).__name__
        )
    if len(value) != HASH_SIZE:
        raise VerificationError(
            f"{what} is not a {HASH_SIZE}-byte hash", expected=HASH_SIZE, computed=len(value)
        )


def _check_proof(proof: Sequence[bytes], expected_len: int, kind: str) -> None:
    if len(proof) != expected_len:
        raise VerificationError(
            f"{kind} proof has the wrong number of hashes",
            expected=expected_len,
            computed=len(proof),
        )
    for i, node in enumerate(proof):
        _check_hash(node, f"{kind} proof[{i}]")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Returns None; raises :class:`VerificationError` otherwise.
    """
    if index < 0 or size < 0:
        raise VerificationError(
            "index and tree size must not be negative", where=f"index {index}, size {size}"
        )
    if index >= size:
        raise VerificationError(
            f"leaf index {index} is not in a tree of size {size}",
            expected=f"index < {size}",
            computed=index,
        )
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    # The path has one node per level below the fork of index and size-1, plus one per set bit
    # of index above it (the perfect left subtrees on the right border).
    inner = (index ^ (size - 1)).bit_length()
    _check_proof(proof, inner + (index >> inner).bit_count(), "inclusion")

    # §2.1.3.2 steps 2-5.
    fn, sn, r = index, size - 1, leaf_hash
    sha = _sha256
    for p in proof:
        if sn == 0:  # unreachable after the length check; kept as the RFC states it
            raise VerificationError("inclusion proof is too long", where=f"index {index}")
        if fn & 1 or fn == sn:
            r = sha(_NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is too short", where=f"index {index}")
    if r != root:
        raise VerificationError(
            "inclusion proof does not lead to the root",
            expected=root,
            computed=r,
            where=f"leaf {index} of tree size {size}",
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size1`` with ``root1`` is a prefix of the one of ``size2``.

    RFC 9162 §2.1.4.2, plus the cases the RFC leaves out: ``size1 == size2`` holds only with an
    empty proof and equal roots; ``size1 == 0`` holds only with an empty proof (C2SP
    tlog-witness) and ``root1`` equal to :data:`EMPTY_ROOT`, the only root an empty tree has.
    Raises :class:`VerificationError`.
    """
    where = f"sizes {size1} -> {size2}"
    if size1 < 0 or size2 < 0:
        raise VerificationError("tree sizes must not be negative", where=where)
    if size1 > size2:
        raise VerificationError(
            "the old tree is larger than the new one", expected=f"size1 <= {size2}", computed=size1
        )
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    if size1 == size2:
        _check_proof(proof, 0, "consistency")
        if root1 != root2:
            raise VerificationError(
                "equal tree sizes with different roots", expected=root1, computed=root2, where=where
            )
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise VerificationError(
                "the empty tree has another root", expected=EMPTY_ROOT, computed=root1, where=where
            )
        return
    if size1 == 0:
        _check_proof(proof, 0, "consistency")
        if root1 != EMPTY_ROOT:
            raise VerificationError(
                "the empty tree has another root", expected=EMPTY_ROOT, computed=root1, where=where
            )
        return

    # Proof shape: from the largest perfect subtree ending at size1 (height `shift`, itself
    # root1 when size1 is a power of two) up to the fork with size2-1, then the right border.
    shift = (size1 & -size1).bit_length() - 1
    fork = ((size1 - 1) ^ (size2 - 1)).bit_length()
    seeded = size1 == 1 << shift
    border = ((size1 - 1) >> fork).bit_count()
    _check_proof(proof, (0 if seeded else 1) + fork - shift + border, "consistency")

    # §2.1.4.2 step 1: if size1 is an exact power of 2, prepend root1 to the path.
    path = [root1, *proof] if seeded else list(proof)
    # Steps 2-3.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 4-5.
    fr = sr = path[0]
    sha = _sha256
    for c in path[1:]:
        if sn == 0:  # unreachable after the length check; kept as the RFC states it
            raise VerificationError("consistency proof is too long", where=where)
        if fn & 1 or fn == sn:
            fr = sha(_NODE_PREFIX + c + fr).digest()
            sr = sha(_NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # Step 6.
    if sn != 0:
        raise VerificationError("consistency proof is too short", where=where)
    if fr != root1:
        raise VerificationError(
            "consistency proof does not lead to the old root",
            expected=root1,
            computed=fr,
            where=where,
        )
    if sr != root2:
        raise VerificationError(
            "consistency proof does not lead to the new root",
            expected=root2,
            computed=sr,
            where=where,
        )


class TreeBuilder:
    """Streaming MTH: append leaf hashes, ask for the root at any time in O(log n).

    Keeps the compact range of the tree — the roots of its perfect subtrees, largest first, one
    per set bit of the size. ``on_complete(level, index, hash)`` is called whenever a perfect
    subtree at one of ``levels`` is completed (by default the tile levels 8, 16, …, 56), so a
    verifier can compare recomputed subtree hashes with stored tiles while it streams.
    ``on_run(level, first_index, hashes)`` is told, level by level, every node of every level
    ≥ 1 that an append completes, as one run per level: what a verifier of stored interior
    nodes needs, at the cost of one call per level rather than one per node.
    """

    __slots__ = ("_stack", "_size", "_on_complete", "_levels", "_mask", "_on_run")

    def __init__(
        self,
        *,
        on_complete: Callable[[int, int, bytes], None] | None = None,
        levels: Iterable[int] = range(8, 64, 8),
        on_run: Callable[[int, int, list[bytes]], None] | None = None,
    ) -> None:
        self._stack: list[bytes] = []
        self._size = 0
        self._on_run = on_run
        self._on_complete = on_complete
        self._levels = frozenset(levels) if on_complete is not None else frozenset()
        if any(level < 0 for level in self._levels):
            raise ValueError("subtree levels must not be negative")
        # The slow path runs only on sizes that complete a subtree at the lowest watched level;
        # size & -1 is never 0, so with nothing watched it never runs.
        self._mask = (1 << min(self._levels)) - 1 if self._levels else -1

    @classmethod
    def from_compact_range(
        cls,
        size: int,
        hashes: Sequence[bytes],
        *,
        on_complete: Callable[[int, int, bytes], None] | None = None,
        levels: Iterable[int] = range(8, 64, 8),
        on_run: Callable[[int, int, list[bytes]], None] | None = None,
    ) -> TreeBuilder:
        """Resume from a size and its compact range (as given by :attr:`compact_range`)."""
        if size < 0:
            raise ValueError(f"tree size must not be negative, got {size}")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} compact-range hashes, "
                f"got {len(hashes)}"
            )
        for h in hashes:
            if len(h) != HASH_SIZE:
                raise ValueError(f"compact-range hash is {len(h)} bytes, not {HASH_SIZE}")
        builder = cls(on_complete=on_complete, levels=levels, on_run=on_run)
        builder._stack = list(hashes)
        builder._size = size
        return builder

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def compact_range(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees of the current tree, leftmost (largest) first."""
        return tuple(self._stack)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash (already SHA-256(0x00 || data))."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, not {HASH_SIZE}")
        if self._on_run is not None:
            self.extend((leaf_hash,))
            return
        size = self._size + 1
        self._size = size
        if not size & self._mask:
            self._append_watched(leaf_hash, size)
            return
        if size & 1:  # an odd size closes no subtree
            self._stack.append(leaf_hash)
            return
        stack = self._stack
        h = leaf_hash
        # Each trailing zero bit of the new size closes one perfect subtree.
        while not size & 1:
            h = _sha256(_NODE_PREFIX + stack.pop() + h).digest()
            size >>= 1
        stack.append(h)

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes at once: same result as :meth:`append` in a loop, but the
        hashing runs level by level over the whole batch, which is faster."""
        level = list(leaf_hashes)
        for h in level:
            if len(h) != HASH_SIZE:
                raise ValueError(f"leaf hash is {len(h)} bytes, not {HASH_SIZE}")
        count = len(level)
        if not count:
            return
        old_size = self._size
        stack = self._stack
        callback = self._on_complete
        on_run = self._on_run
        watched = self._levels
        sha = _sha256
        prefix = _NODE_PREFIX
        closed: list[bytes] = []  # new compact-range entries, lowest level first
        if callback is not None and 0 in watched:
            for i, h in enumerate(level):
                callback(0, old_size + i, h)
        j = 0
        while level:
            # Index of level[0] at this level; an old right-edge root joins in front of the
            # new nodes when this level's bit of the old size is set.
            first = old_size >> j
            if first & 1:
                level = [stack.pop(), *level]
                first -= 1
            n = len(level)
            if n & 1:
                closed.append(level[-1])
            level = [sha(prefix + level[i] + level[i + 1]).digest() for i in range(0, n - 1, 2)]
            j += 1
            first >>= 1
            if on_run is not None and level:
                on_run(j, first, level)
            if callback is not None and j in watched:
                for i, h in enumerate(level):
                    callback(j, first + i, h)
        closed.reverse()
        stack.extend(closed)
        self._size = old_size + count

    def _append_watched(self, h: bytes, size: int) -> None:
        stack = self._stack
        levels = self._levels
        callback = self._on_complete
        level = 0
        if 0 in levels and callback is not None:
            callback(0, size - 1, h)
        while not size >> level & 1:
            h = _sha256(_NODE_PREFIX + stack.pop() + h).digest()
            level += 1
            if level in levels and callback is not None:
                callback(level, (size >> level) - 1, h)
        stack.append(h)

    def root(self) -> bytes:
        """MTH of the leaves appended so far — the compact range folded right to left."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        acc = stack[-1]
        for h in reversed(stack[:-1]):
            acc = _sha256(_NODE_PREFIX + h + acc).digest()
        return acc
