"""Verify RFC 9162 inclusion and consistency proofs; pure functions, no I/O.

Each check comes as a pair: `root_from_*` computes the root a proof implies,
`verify_*` compares it and raises. Every failure is a `ProofError`; a proof
that is well formed but leads to another root raises its subclass
`RootMismatchError`, which carries both roots.

All preconditions (sizes, index, hash lengths, exact proof length) are checked
before any hashing, so a malformed proof never costs a hash and never leaks an
IndexError or ValueError.

The proof length is derived from the index and size up front, as in
transparency-dev/merkle (`proof/verify.go`): an inclusion proof of leaf
`index` in a tree of `size` leaves has `inner` elements on the path below the
point where the path to `index` and the path to the last leaf `size - 1` join,
and `border` left siblings above it (one per set bit of `index >> inner`).
Walking the proof that way performs exactly the steps of the RFC 9162
algorithms, whose `sn == 0` checks then hold by construction.

Spec: RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency).
"""

from __future__ import annotations

from collections.abc import Sequence

from sessions.core._errors import ProofError, RootMismatchError
from sessions.core._merkle_hash import EMPTY_ROOT, HASH_SIZE, node_hash

__all__ = [
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]


def _check_hash(value: object, what: str) -> None:
    """Raise ProofError unless `value` is bytes of length HASH_SIZE."""
    if not isinstance(value, bytes):
        raise ProofError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_size(value: object, what: str) -> int:
    """Return `value` if it is an int >= 0 (not a bool), else raise ProofError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{what} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ProofError(f"{what} must be >= 0, got {value}")
    return value


def _check_proof(proof: Sequence[bytes], expected: int) -> None:
    """Raise ProofError unless `proof` holds exactly `expected` hashes of HASH_SIZE bytes."""
    if len(proof) != expected:
        raise ProofError(f"proof must have {expected} hashes, got {len(proof)}")
    for i, element in enumerate(proof):
        _check_hash(element, f"proof[{i}]")


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Return (inner, border): the inclusion proof length split at the right border.

    Precondition: 0 <= index < size.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Hash `seed` up through `proof`, a sibling on the left where `index`'s bit is set."""
    for i, sibling in enumerate(proof):
        seed = node_hash(sibling, seed) if (index >> i) & 1 else node_hash(seed, sibling)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Hash `seed` up through the left siblings of `proof` only (the older tree's view)."""
    for i, sibling in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(sibling, seed)
    return seed


def _chain_border(seed: bytes, proof: Sequence[bytes]) -> bytes:
    """Hash `seed` up through `proof`, every element a left sibling."""
    for sibling in proof:
        seed = node_hash(sibling, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, *, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root that `proof` implies for leaf `leaf_hash` at `index` of a `size`-leaf tree.

    Preconditions: 0 <= index < size; len(leaf_hash) == len(proof[i]) == 32;
    len(proof) == inner + border as decomposed from (index, size).
    Spec: RFC 9162 §2.1.3.2.
    """
    _check_size(index, "index")
    _check_size(size, "size")
    if index >= size:
        raise ProofError(f"index {index} is not below tree size {size}")
    _check_hash(leaf_hash, "leaf hash")
    inner, border = _decompose(index, size)
    _check_proof(proof, inner + border)
    root = _chain_inner(leaf_hash, proof[:inner], index)
    return _chain_border(root, proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, *, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `proof` places `leaf_hash` at `index` of the `size`-leaf tree with `root`.

    Preconditions: as root_from_inclusion_proof, and len(root) == 32.
    Raises RootMismatchError (expected=root) if the proof leads elsewhere, ProofError otherwise.
    Spec: RFC 9162 §2.1.3.2.
    """
    _check_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_hash, index=index, size=size, proof=proof)
    if computed != root:
        raise RootMismatchError(expected=root, computed=computed)


def _check_consistency_args(old_root: bytes, old_size: int, new_size: int) -> None:
    """Raise ProofError unless 0 <= old_size <= new_size and len(old_root) == 32."""
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is greater than new size {new_size}")
    _check_hash(old_root, "old root")


def _trivial_consistency(
    old_root: bytes, old_size: int, new_size: int, proof: Sequence[bytes]
) -> None:
    """Check the proof-less cases old_size == new_size or old_size == 0.

    Preconditions: 0 <= old_size <= new_size, and old_size == new_size or old_size == 0.
    """
    if len(proof) != 0:
        raise ProofError(f"proof from size {old_size} to {new_size} must be empty")
    # The empty tree has one root by definition (RFC 9162 §2.1.1): insist on it.
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise RootMismatchError(expected=old_root, computed=EMPTY_ROOT)


def root_from_consistency_proof(
    old_root: bytes, *, old_size: int, new_size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root of the `new_size`-leaf tree that `proof` shows extends `old_root`.

    Preconditions: 0 < old_size <= new_size (old_size == 0 determines no new root);
    len(old_root) == len(proof[i]) == 32; proof == [] if old_size == new_size, else
    len(proof) == [old_size not a power of 2] + inner + border - trailing_zeros(old_size).
    Raises RootMismatchError (expected=old_root) if the proof does not rebuild old_root.
    Spec: RFC 9162 §2.1.4.2.
    """
    _check_consistency_args(old_root, old_size, new_size)
    if old_size == 0 and new_size > 0:
        raise ProofError("a consistency proof from the empty tree does not determine a new root")
    if old_size == new_size:
        _trivial_consistency(old_root, old_size, new_size, proof)
        return old_root
    # 1. Shape: the old tree's last leaf has a path that starts at a perfect
    #    subtree of 2**shift leaves; the proof starts there (its root is the
    #    seed), omitted when that subtree is the whole old tree.
    shift = (old_size & -old_size).bit_length() - 1
    inner, border = _decompose(old_size - 1, new_size)
    inner -= shift
    seeded = old_size == 1 << shift
    _check_proof(proof, (0 if seeded else 1) + inner + border)
    seed, rest = (old_root, proof) if seeded else (proof[0], proof[1:])
    # 2. Rebuild the old root from the left siblings only.
    mask = (old_size - 1) >> shift
    computed_old = _chain_border(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if computed_old != old_root:
        raise RootMismatchError(expected=old_root, computed=computed_old)
    # 3. Build the new root from all siblings.
    return _chain_border(_chain_inner(seed, rest[:inner], mask), rest[inner:])


def verify_consistency(
    old_root: bytes, new_root: bytes, *, old_size: int, new_size: int, proof: Sequence[bytes]
) -> None:
    """Check that the `new_size`-leaf tree with `new_root` extends the one with `old_root`.

    Preconditions: 0 <= old_size <= new_size; len(old_root) == len(new_root) == 32.
    old_size == new_size: proof == [] and old_root == new_root.
    old_size == 0 < new_size: proof == [] and old_root == EMPTY_ROOT (any new_root).
    Otherwise as root_from_consistency_proof.
    Raises RootMismatchError if either root does not match, ProofError otherwise.
    Spec: RFC 9162 §2.1.4.2.
    """
    _check_consistency_args(old_root, old_size, new_size)
    _check_hash(new_root, "new root")
    if old_size == 0 and new_size > 0:
        _trivial_consistency(old_root, old_size, new_size, proof)
        return
    computed = root_from_consistency_proof(
        old_root, old_size=old_size, new_size=new_size, proof=proof
    )
    if computed != new_root:
        raise RootMismatchError(expected=new_root, computed=computed)
