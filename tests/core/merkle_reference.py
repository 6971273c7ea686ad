"""A deliberately naive RFC 9162 Merkle tree, for cross-checking sessions.core.

Everything here is transcribed from the RFC text, recursive and slow on
purpose (O(n) hashes per call, list slicing everywhere), and shares no code
with the library: it hashes with hashlib itself and works on raw leaf data,
not leaf hashes. Do not optimise it; obviousness is the point.

Spec: RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH), §2.1.3.2 (inclusion check),
§2.1.4.1 (PROOF, SUBPROOF), §2.1.4.2 (consistency check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def split_point(n: int) -> int:
    """Return k, the largest power of two smaller than n (k < n <= 2k). Precondition: n > 1."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """Return MTH(D[n]) for the list of data entries d (RFC 9162 §2.1.1)."""
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + d[0])
    k = split_point(n)
    return _sha256(b"\x01" + mth(d[0:k]) + mth(d[k:n]))


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """Return PATH(m, D[n]), the audit path of entry m (RFC 9162 §2.1.3.1). 0 <= m < n."""
    n = len(d)
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return path(m, d[0:k]) + [mth(d[k:n])]
    return path(m - k, d[k:n]) + [mth(d[0:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """Return PROOF(m, D[n]) (RFC 9162 §2.1.4.1). 0 < m <= n."""
    return subproof(m, d, True)


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """Return SUBPROOF(m, D[n], b) (RFC 9162 §2.1.4.1)."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = split_point(n)
    if m <= k:
        return subproof(m, d[0:k], b) + [mth(d[k:n])]
    return subproof(m - k, d[k:n], False) + [mth(d[0:k])]


def path_sides(m: int, n: int) -> list[str]:
    """Return, for PATH(m, D[n]), which side ("L" or "R") each sibling sits on.

    Two (m, n) with equal sides make the verifier perform identical steps.
    """
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return path_sides(m, k) + ["R"]
    return path_sides(m - k, n - k) + ["L"]


def subproof_roles(m: int, n: int, b: bool = True) -> list[str]:
    """Return, for SUBPROOF(m, D[n], b), the role of each element.

    "seed": the old tree's last perfect subtree; "L": a left sibling (in both
    trees); "R": a right sibling (only in the new tree). Two (m, n) with equal
    roles make the verifier perform identical steps.
    """
    if m == n:
        return [] if b else ["seed"]
    k = split_point(n)
    if m <= k:
        return subproof_roles(m, k, b) + ["R"]
    return subproof_roles(m - k, n - k, False) + ["L"]


def rfc_verify_inclusion(
    leaf_index: int, tree_size: int, hash_: bytes, inclusion_path: Sequence[bytes], root: bytes
) -> bool:
    """Return the verdict of the RFC 9162 §2.1.3.2 steps, followed literally.

    `hash_` is the leaf hash. The steps check no hash lengths; callers pass 32-byte hashes.
    """
    if leaf_index >= tree_size:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = hash_
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _sha256(b"\x01" + p + r)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(
    first: int,
    second: int,
    first_hash: bytes,
    second_hash: bytes,
    consistency_path: Sequence[bytes],
) -> bool:
    """Return the verdict of the RFC 9162 §2.1.4.2 steps, followed literally.

    The RFC defines the steps for 0 < first < second only; the edge cases
    first == second and first == 0 follow transparency-dev/merkle, plus the
    empty tree's root being fixed to SHA-256("").
    """
    if first > second:
        return False
    if first == second:
        return (
            len(consistency_path) == 0
            and first_hash == second_hash
            and (first > 0 or first_hash == _sha256(b""))
        )
    if first == 0:
        return len(consistency_path) == 0 and first_hash == _sha256(b"")
    if len(consistency_path) == 0:
        return False
    path_ = list(consistency_path)
    if first & (first - 1) == 0:
        path_ = [first_hash, *path_]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path_[0]
    for c in path_[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr)
            sr = _sha256(b"\x01" + c + sr)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0
