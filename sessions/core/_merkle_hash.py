"""The RFC 9162 Merkle tree hashes: leaf and node hashes and the empty root.

Leaves and interior nodes are hashed under distinct one-byte prefixes
(`LEAF_PREFIX`, `NODE_PREFIX`), so a leaf whose data is the concatenation of
two hashes can never stand in for an interior node (second-preimage attack).

Spec: RFC 9162 §2.1.1 (Definition of the Merkle Tree), SHA-256 hash.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "leaf_hash",
    "node_hash",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes | bytearray | memoryview) -> bytes:
    """Return MTH({data}) = SHA-256(0x00 || data), the hash of one leaf.

    Precondition: none; `data` may be empty or of any length, and is not copied.
    Spec: RFC 9162 §2.1.1.
    """
    h = hashlib.sha256(LEAF_PREFIX)
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return SHA-256(0x01 || left || right), the hash of an interior node.

    Precondition: len(left) == len(right) == HASH_SIZE (callers check; not re-checked here).
    Spec: RFC 9162 §2.1.1.
    """
    return hashlib.sha256(NODE_PREFIX + left + right).digest()
