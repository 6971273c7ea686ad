"""Build RFC 9162 Merkle trees: root hashes, inclusion and consistency proofs.

Proof construction does not read storage. It names the subtree ranges whose
hashes it needs and asks a `NodeSource` for them; `LeafHashes` is the
in-memory source. `CompactRange` is the incremental builder that keeps only
the O(log n) roots of the perfect subtrees covering the leaves so far.

All hashes here are leaf hashes (`leaf_hash(data)`), never raw leaf data.

Spec: RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH), §2.1.4.1 (PROOF, SUBPROOF).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from sessions.core._errors import ProofError
from sessions.core._merkle_hash import EMPTY_ROOT, HASH_SIZE, node_hash

__all__ = [
    "CompactRange",
    "LeafHashes",
    "NodeSource",
    "consistency_proof",
    "inclusion_proof",
    "root_hash",
]


class NodeSource(Protocol):
    """Gives the hash of a subtree the proof algorithms name."""

    def subtree_hash(self, begin: int, end: int) -> bytes:
        """Return MTH(D[begin:end]), the root hash of leaves begin..end-1.

        Preconditions: 0 <= begin < end <= tree size. The proof algorithms ask only
        for perfect subtrees (end - begin == 2**k, begin % 2**k == 0) and for the
        right edge of a tree (end == a tree size, begin aligned as above).
        Spec: RFC 9162 §2.1.1.
        """
        ...


def _check_leaf_hash(value: object, what: str) -> bytes:
    """Return `value` if it is bytes of length HASH_SIZE, else raise ProofError."""
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes")
    return value


def _check_count(value: object, what: str) -> int:
    """Return `value` if it is an int >= 0 (not a bool), else raise ProofError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _split(n: int) -> int:
    """Return k, the largest power of two smaller than n (RFC 9162 §2.1.1). Precondition: n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


class LeafHashes:
    """A NodeSource over an in-memory sequence of leaf hashes.

    Every subtree hash computed is memoized by (begin, end), so building all the
    proofs of one tree computes each node once: O(n) hashes in total.
    Precondition: every leaf hash is 32 bytes (checked up front, O(n)).
    """

    __slots__ = ("_cache", "_leaves")

    def __init__(self, leaves: Sequence[bytes]) -> None:
        for i, leaf in enumerate(leaves):
            _check_leaf_hash(leaf, f"leaf hash {i}")
        self._leaves = leaves
        self._cache: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._leaves)

    def subtree_hash(self, begin: int, end: int) -> bytes:
        """Return MTH(D[begin:end]) over the leaf hashes.

        Preconditions: 0 <= begin < end <= len(leaves).
        Spec: RFC 9162 §2.1.1.
        """
        if not 0 <= begin < end <= len(self._leaves):
            raise ProofError(f"subtree [{begin}, {end}) is not inside {len(self._leaves)} leaves")
        return self._hash(begin, end)

    def _hash(self, begin: int, end: int) -> bytes:
        if end - begin == 1:
            return self._leaves[begin]
        cached = self._cache.get((begin, end))
        if cached is None:
            # Recursion depth is the tree height, at most 64 for any real tree.
            k = _split(end - begin)
            cached = node_hash(self._hash(begin, begin + k), self._hash(begin + k, end))
            self._cache[(begin, end)] = cached
        return cached


def root_hash(leaves: Iterable[bytes]) -> bytes:
    """Return MTH(D), the root hash over `leaves` (leaf hashes); EMPTY_ROOT if there are none.

    Preconditions: len(leaves[i]) == 32. Iterative, O(n) time, O(log n) memory.
    Spec: RFC 9162 §2.1.1.
    """
    return CompactRange.from_leaf_hashes(leaves).root()


def inclusion_proof(index: int, *, size: int, nodes: NodeSource) -> list[bytes]:
    """Return PATH(index, D[0:size]), the leaf-to-root audit path of leaf `index`.

    Preconditions: 0 <= index < size <= the number of leaves `nodes` holds.
    Spec: RFC 9162 §2.1.3.1.
    """
    _check_count(index, "index")
    _check_count(size, "size")
    if index >= size:
        raise ProofError(f"index {index} is not below tree size {size}")
    # Walk down from the root; each step keeps the half holding `index` and
    # records the other half. The RFC lists siblings bottom-up, hence reversed.
    siblings: list[tuple[int, int]] = []
    begin, end = 0, size
    while end - begin > 1:
        middle = begin + _split(end - begin)
        if index < middle:
            siblings.append((middle, end))
            end = middle
        else:
            siblings.append((begin, middle))
            begin = middle
    return [nodes.subtree_hash(b, e) for b, e in reversed(siblings)]


def consistency_proof(old_size: int, *, new_size: int, nodes: NodeSource) -> list[bytes]:
    """Return PROOF(old_size, D[0:new_size]): shows the old tree is a prefix of the new one.

    Preconditions: 0 <= old_size <= new_size <= the number of leaves `nodes` holds.
    Empty if old_size == 0 or old_size == new_size.
    Spec: RFC 9162 §2.1.4.1 (PROOF and SUBPROOF).
    """
    _check_count(old_size, "old size")
    _check_count(new_size, "new size")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is greater than new size {new_size}")
    if old_size == 0:
        return []
    # SUBPROOF(m, D[begin:end], b) unrolled: descend towards the old tree's
    # right edge, recording the sibling half at each step.
    ranges: list[tuple[int, int]] = []
    begin, end, whole_old_tree = 0, new_size, True
    while old_size != end:
        middle = begin + _split(end - begin)
        if old_size <= middle:
            ranges.append((middle, end))
            end = middle
        else:
            ranges.append((begin, middle))
            begin, whole_old_tree = middle, False
    if not whole_old_tree:
        # The old tree's last perfect subtree; when it is the whole old tree the
        # verifier already holds it as the old root.
        ranges.append((begin, end))
    return [nodes.subtree_hash(b, e) for b, e in reversed(ranges)]


class CompactRange:
    """The incremental Merkle tree builder: the roots of the perfect subtrees so far.

    For `size` leaves it holds popcount(size) hashes, left to right, of subtrees of
    strictly decreasing power-of-two sizes (the set bits of `size`): O(log n) memory.
    Spec: RFC 9162 §2.1.1; the compact range of transparency-dev/merkle.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_leaf_hashes(cls, leaves: Iterable[bytes]) -> CompactRange:
        """Return the compact range over `leaves`, e.g. replayed after a restart.

        Preconditions: len(leaves[i]) == 32.
        """
        compact = cls()
        for leaf in leaves:
            compact.append(leaf)
        return compact

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Return the compact range restored from a stored `size` and `hashes`.

        Preconditions: size >= 0; len(hashes) == popcount(size); len(hashes[i]) == 32.
        The hashes themselves cannot be checked without the leaves.
        """
        _check_count(size, "size")
        if len(hashes) != size.bit_count():
            raise ProofError(f"size {size} needs {size.bit_count()} hashes, got {len(hashes)}")
        compact = cls()
        compact._hashes = [_check_leaf_hash(h, f"hash {i}") for i, h in enumerate(hashes)]
        compact._size = size
        return compact

    @property
    def size(self) -> int:
        """Return the number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Return the perfect-subtree roots, largest (leftmost) first; popcount(size) of them."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash on the right. Precondition: len(leaf_hash) == 32."""
        self._hashes.append(_check_leaf_hash(leaf_hash, "leaf hash"))
        # Each trailing 1 bit of the old size is a perfect subtree of the same
        # height as the one just completed on its right: merge them.
        carry = self._size
        while carry & 1:
            right = self._hashes.pop()
            self._hashes[-1] = node_hash(self._hashes[-1], right)
            carry >>= 1
        self._size += 1

    def root(self) -> bytes:
        """Return MTH(D[0:size]); EMPTY_ROOT when size == 0.

        Spec: RFC 9162 §2.1.1 (the right-to-left fold of the perfect subtrees).
        """
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for peak in reversed(self._hashes[:-1]):
            root = node_hash(peak, root)
        return root

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"
