"""Tests of the RFC 9162 Merkle tree in sessions.core: vectors, mutations, properties.

1. Reference vectors (tests/core/vectors/merkle/reference-*.json): the RFC 6962 test
   tree of the Certificate Transparency implementations, copied from
   transparency-dev/merkle testonly/constants.go @ 582a6ad190b6848f1d26f8bf08ddef29955d9db1
   and proof/verify_test.go @ 02194e9afb6c1d95b5381350007963aa70fff472, the same data
   as google/certificate-transparency cpp/merkletree/merkle_tree_test.cc
   @ 0e901cacd1388fa16f78b184612f6cd16e5ceec1. Each file's "source" field says which.
2. Mutation vectors (tests/core/vectors/merkle/{inclusion,consistency}-*.json): one
   file per mutation of a reference proof, with the error class it must raise.
3. Hypothesis properties over random trees, cross-checked against the naive
   reference in tests/core/merkle_reference.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions.core import (
    EMPTY_ROOT,
    HASH_SIZE,
    LEAF_PREFIX,
    NODE_PREFIX,
    CompactRange,
    LeafHashes,
    NodeSource,
    ProofError,
    RootMismatchError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.core import merkle_reference as ref

VECTORS = Path(__file__).parent / "vectors" / "merkle"
ERRORS: dict[str, type[ProofError]] = {
    "ProofError": ProofError,
    "RootMismatchError": RootMismatchError,
}
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- loading --------------------------------------------------------------


@cache
def load_vector(name: str) -> dict[str, Any]:
    """Return the parsed JSON vector file `name` from tests/core/vectors/merkle."""
    result: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return result


def decode_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Return `inputs` with hex strings (and lists of them) decoded to bytes."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, str):
            out[key] = bytes.fromhex(value)
        elif isinstance(value, list):
            out[key] = [bytes.fromhex(v) for v in value]
        else:
            out[key] = value
    return out


MUTATIONS = sorted(
    p.name for p in VECTORS.glob("*.json") if p.name.startswith(("inclusion-", "consistency-"))
)
TREE = load_vector("reference-tree.json")
INPUTS = [bytes.fromhex(x) for x in TREE["leaf_inputs"]]
LEAVES = [leaf_hash(x) for x in INPUTS]
ROOTS = [bytes.fromhex(r) for r in TREE["roots"]]
INCLUSION = [decode_inputs(p) for p in load_vector("reference-inclusion-proofs.json")["proofs"]]
CONSISTENCY = [decode_inputs(p) for p in load_vector("reference-consistency-proofs.json")["proofs"]]


def fails(call: Callable[[], object]) -> bool:
    """Return True if `call` raises ProofError, False if it returns; anything else propagates."""
    try:
        call()
    except ProofError:
        return True
    return False


# --- 1. reference vectors ---------------------------------------------------


def test_vector_files_cite_their_source() -> None:
    for name in (
        "reference-tree.json",
        "reference-inclusion-proofs.json",
        "reference-consistency-proofs.json",
    ):
        for source in load_vector(name)["source"]:
            assert source["repository"] and source["path"]
            assert len(source["commit"]) == 40


def test_constants() -> None:
    assert HASH_SIZE == 32 and LEAF_PREFIX == b"\x00" and NODE_PREFIX == b"\x01"
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0]
    assert leaf_hash(b"ab") == hashlib.sha256(b"\x00ab").digest()
    assert leaf_hash(memoryview(b"ab")) == leaf_hash(bytearray(b"ab")) == leaf_hash(b"ab")
    assert (
        node_hash(LEAVES[0], LEAVES[1]) == hashlib.sha256(b"\x01" + LEAVES[0] + LEAVES[1]).digest()
    )


def test_reference_leaf_and_node_hashes() -> None:
    nodes = LeafHashes(LEAVES)
    for level, hashes in enumerate(TREE["node_hashes"]):
        width = 1 << level
        for i, expected in enumerate(hashes):
            assert nodes.subtree_hash(i * width, (i + 1) * width).hex() == expected
    assert [h.hex() for h in LEAVES] == TREE["node_hashes"][0]


@pytest.mark.parametrize("size", range(9))
def test_reference_prefix_roots(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ROOTS[size]
    assert ref.mth(INPUTS[:size]) == ROOTS[size]
    compact = CompactRange.from_leaf_hashes(LEAVES[:size])
    assert compact.root() == ROOTS[size]
    assert [h.hex() for h in compact.hashes] == TREE["compact_ranges"][size]
    if size:
        assert LeafHashes(LEAVES).subtree_hash(0, size) == ROOTS[size]


@pytest.mark.parametrize("vector", INCLUSION, ids=lambda v: f"{v['index']}-of-{v['size']}")
def test_reference_inclusion_proofs(vector: dict[str, Any]) -> None:
    index, size, proof = vector["index"], vector["size"], vector["proof"]
    assert inclusion_proof(index, size=size, nodes=LeafHashes(LEAVES)) == proof
    assert ref.path(index, INPUTS[:size]) == proof
    leaf = LEAVES[index]
    assert root_from_inclusion_proof(leaf, index=index, size=size, proof=proof) == ROOTS[size]
    verify_inclusion(leaf, index=index, size=size, proof=proof, root=ROOTS[size])


@pytest.mark.parametrize("vector", CONSISTENCY, ids=lambda v: f"{v['old_size']}-to-{v['new_size']}")
def test_reference_consistency_proofs(vector: dict[str, Any]) -> None:
    old, new, proof = vector["old_size"], vector["new_size"], vector["proof"]
    assert consistency_proof(old, new_size=new, nodes=LeafHashes(LEAVES)) == proof
    assert ref.proof(old, INPUTS[:new]) == proof
    implied = root_from_consistency_proof(ROOTS[old], old_size=old, new_size=new, proof=proof)
    assert implied == ROOTS[new]
    verify_consistency(ROOTS[old], ROOTS[new], old_size=old, new_size=new, proof=proof)


def test_reference_tree_all_proofs() -> None:
    nodes = LeafHashes(LEAVES)
    for size in range(1, 9):
        for index in range(size):
            proof = inclusion_proof(index, size=size, nodes=nodes)
            assert proof == ref.path(index, INPUTS[:size])
            verify_inclusion(LEAVES[index], index=index, size=size, proof=proof, root=ROOTS[size])
        for old in range(size + 1):
            proof = consistency_proof(old, new_size=size, nodes=nodes)
            assert proof == (ref.proof(old, INPUTS[:size]) if old else [])
            verify_consistency(ROOTS[old], ROOTS[size], old_size=old, new_size=size, proof=proof)


# --- 2. mutation vectors ----------------------------------------------------


def _verifier(kind: str, inputs: dict[str, Any]) -> Callable[[], None]:
    if kind == "inclusion":
        return lambda: verify_inclusion(
            inputs["leaf_hash"],
            index=inputs["index"],
            size=inputs["size"],
            proof=inputs["proof"],
            root=inputs["root"],
        )
    assert kind == "consistency"
    return lambda: verify_consistency(
        inputs["old_root"],
        inputs["new_root"],
        old_size=inputs["old_size"],
        new_size=inputs["new_size"],
        proof=inputs["proof"],
    )


def _rfc_verdict(kind: str, inputs: dict[str, Any]) -> bool | None:
    """Return the literal RFC steps' verdict, or None where they do not apply (bad types)."""
    hashes = [v for k, v in inputs.items() if k != "proof" and isinstance(v, bytes)]
    if any(len(h) != HASH_SIZE for h in [*hashes, *inputs["proof"]]):
        return None
    if any(isinstance(v, int) and v < 0 for v in inputs.values()):
        return None
    if kind == "inclusion":
        return ref.rfc_verify_inclusion(
            inputs["index"], inputs["size"], inputs["leaf_hash"], inputs["proof"], inputs["root"]
        )
    return ref.rfc_verify_consistency(
        inputs["old_size"],
        inputs["new_size"],
        inputs["old_root"],
        inputs["new_root"],
        inputs["proof"],
    )


def test_mutation_vectors_are_well_formed() -> None:
    assert len(MUTATIONS) >= 40
    for name in MUTATIONS:
        vector = load_vector(name)
        assert name.startswith(vector["kind"] + "-")
        assert vector["description"] and vector["derived_from"]
        assert vector["expected_error"] in (None, *ERRORS)


@pytest.mark.parametrize("name", MUTATIONS, ids=[n.removesuffix(".json") for n in MUTATIONS])
def test_mutation_vector(name: str) -> None:
    vector = load_vector(name)
    inputs = decode_inputs(vector["inputs"])
    verify = _verifier(vector["kind"], inputs)
    expected = vector["expected_error"]
    if expected is None:
        verify()
    else:
        with pytest.raises(ERRORS[expected]) as info:
            verify()
        assert type(info.value) is ERRORS[expected]
        if isinstance(info.value, RootMismatchError):
            assert info.value.expected != info.value.computed
    assert _rfc_verdict(vector["kind"], inputs) in (None, expected is None)


# --- 3. properties ----------------------------------------------------------


@dataclass
class Tree:
    """A random tree of distinct leaf data, with its leaf hashes and a memoizing source."""

    data: list[bytes]
    leaves: list[bytes] = field(init=False)
    nodes: LeafHashes = field(init=False)

    def __post_init__(self) -> None:
        self.leaves = [leaf_hash(d) for d in self.data]
        self.nodes = LeafHashes(self.leaves)

    def root(self, size: int) -> bytes:
        return self.nodes.subtree_hash(0, size) if size else EMPTY_ROOT


@st.composite
def trees(draw: st.DrawFn, min_size: int = 1, max_size: int = 300) -> Tree:
    """Return a Tree of distinct leaf data (distinct, so no two subtrees share a hash)."""
    size = draw(st.integers(min_size, max_size))
    salt = draw(st.binary(max_size=4))
    return Tree([i.to_bytes(2, "big") + salt for i in range(size)])


def flip_bit(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@PROPERTY
@given(tree=trees(), data=st.data())
def test_inclusion_proofs_match_reference_and_verify(tree: Tree, data: st.DataObject) -> None:
    size = data.draw(st.integers(1, len(tree.data)), label="size")
    root = tree.root(size)
    assert root == root_hash(tree.leaves[:size]) == ref.mth(tree.data[:size])
    for index in data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=4)):
        proof = inclusion_proof(index, size=size, nodes=tree.nodes)
        assert proof == ref.path(index, tree.data[:size])
        leaf = tree.leaves[index]
        assert root_from_inclusion_proof(leaf, index=index, size=size, proof=proof) == root
        verify_inclusion(leaf, index=index, size=size, proof=proof, root=root)


@PROPERTY
@given(tree=trees(), data=st.data())
def test_consistency_proofs_match_reference_and_verify(tree: Tree, data: st.DataObject) -> None:
    new = data.draw(st.integers(0, len(tree.data)), label="new_size")
    old = data.draw(st.integers(0, new), label="old_size")
    proof = consistency_proof(old, new_size=new, nodes=tree.nodes)
    assert proof == (ref.proof(old, tree.data[:new]) if old else [])
    old_root, new_root = tree.root(old), tree.root(new)
    if old:
        implied = root_from_consistency_proof(old_root, old_size=old, new_size=new, proof=proof)
        assert implied == new_root
    verify_consistency(old_root, new_root, old_size=old, new_size=new, proof=proof)


def test_all_proofs_of_small_trees_match_reference() -> None:
    tree = Tree([bytes([i]) for i in range(24)])
    for size in range(1, 25):
        for index in range(size):
            assert inclusion_proof(index, size=size, nodes=tree.nodes) == ref.path(
                index, tree.data[:size]
            )
        for old in range(1, size + 1):
            assert consistency_proof(old, new_size=size, nodes=tree.nodes) == ref.proof(
                old, tree.data[:size]
            )


@st.composite
def inclusion_cases(draw: st.DrawFn) -> tuple[Tree, dict[str, Any]]:
    tree = draw(trees(min_size=2))
    size = draw(st.integers(2, len(tree.data)))
    index = draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size=size, nodes=tree.nodes)
    case = {
        "leaf_hash": tree.leaves[index],
        "index": index,
        "size": size,
        "proof": proof,
        "root": tree.root(size),
    }
    return tree, case


def _check_mutated(kind: str, case: dict[str, Any], *, must_fail: bool) -> None:
    """Assert the verifier fails exactly when told to, and agrees with the RFC reference."""
    failed = fails(_verifier(kind, case))
    assert failed == must_fail
    assert _rfc_verdict(kind, case) == (not failed)


def _flip_drawn_hash_bit(case: dict[str, Any], hashes: list[str],
                         data: st.DataObject) -> dict[str, Any]:
    """Return case with one drawn bit flipped in one of `hashes` or of the proof's hashes."""
    targets: list[str | int] = [*hashes, *range(len(case["proof"]))]
    target = data.draw(st.sampled_from(targets), label="target")
    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    mutated = dict(case)
    if isinstance(target, int):
        mutated["proof"] = list(case["proof"])
        mutated["proof"][target] = flip_bit(case["proof"][target], bit)
    else:
        mutated[target] = flip_bit(case[target], bit)
    return mutated


@PROPERTY
@given(inclusion_cases(), st.data())
def test_inclusion_fails_on_any_flipped_hash_bit(
    tree_case: tuple[Tree, dict[str, Any]], data: st.DataObject
) -> None:
    _, case = tree_case
    mutated = _flip_drawn_hash_bit(case, ["leaf_hash", "root"], data)
    with pytest.raises(RootMismatchError):
        _verifier("inclusion", mutated)()
    _check_mutated("inclusion", mutated, must_fail=True)


@PROPERTY
@given(inclusion_cases(), st.integers(0, 12))
def test_inclusion_fails_on_flipped_index_bit(
    tree_case: tuple[Tree, dict[str, Any]], bit: int
) -> None:
    _, case = tree_case
    _check_mutated("inclusion", dict(case, index=case["index"] ^ (1 << bit)), must_fail=True)


@PROPERTY
@given(inclusion_cases(), st.integers(0, 12))
def test_inclusion_with_flipped_size_bit_fails_unless_path_shape_is_equal(
    tree_case: tuple[Tree, dict[str, Any]], bit: int
) -> None:
    """Sizes with the same audit-path shape share one proof: RFC 9162 does not bind the size.

    E.g. leaf 0's proof in a 5-leaf tree also verifies "in a 7-leaf tree" against
    the 5-leaf root. Soundness rests on the signed checkpoint binding size and root.
    """
    _, case = tree_case
    index, size = case["index"], case["size"] ^ (1 << bit)
    same_shape = index < size and ref.path_sides(index, size) == ref.path_sides(index, case["size"])
    _check_mutated("inclusion", dict(case, size=size), must_fail=not same_shape)


@st.composite
def consistency_cases(draw: st.DrawFn) -> tuple[Tree, dict[str, Any]]:
    tree = draw(trees(min_size=2))
    new = draw(st.integers(2, len(tree.data)))
    old = draw(st.integers(1, new - 1))
    proof = consistency_proof(old, new_size=new, nodes=tree.nodes)
    case = {
        "old_root": tree.root(old),
        "new_root": tree.root(new),
        "old_size": old,
        "new_size": new,
        "proof": proof,
    }
    return tree, case


def _consistency_shape(old: int, new: int) -> tuple[str, ...] | None:
    if old > new:
        return None
    if old == 0 or old == new:
        return ("trivial", str(old == 0))
    return tuple(ref.subproof_roles(old, new))


@PROPERTY
@given(consistency_cases(), st.data())
def test_consistency_fails_on_any_flipped_hash_bit(
    tree_case: tuple[Tree, dict[str, Any]], data: st.DataObject
) -> None:
    _, case = tree_case
    mutated = _flip_drawn_hash_bit(case, ["old_root", "new_root"], data)
    with pytest.raises(RootMismatchError):
        _verifier("consistency", mutated)()
    _check_mutated("consistency", mutated, must_fail=True)


@PROPERTY
@given(consistency_cases(), st.sampled_from(["old_size", "new_size"]), st.integers(0, 12))
def test_consistency_with_flipped_size_bit_fails_unless_proof_shape_is_equal(
    tree_case: tuple[Tree, dict[str, Any]], which: str, bit: int
) -> None:
    """As for inclusion, sizes with the same SUBPROOF shape share one proof."""
    _, case = tree_case
    mutated = dict(case, **{which: case[which] ^ (1 << bit)})
    same_shape = _consistency_shape(mutated["old_size"], mutated["new_size"]) == (
        _consistency_shape(case["old_size"], case["new_size"])
    )
    _check_mutated("consistency", mutated, must_fail=not same_shape)


@PROPERTY
@given(consistency_cases())
def test_consistency_fails_with_swapped_roots(tree_case: tuple[Tree, dict[str, Any]]) -> None:
    _, case = tree_case
    swapped = dict(case, old_root=case["new_root"], new_root=case["old_root"])
    with pytest.raises(RootMismatchError):
        _verifier("consistency", swapped)()


@PROPERTY
@given(st.lists(st.binary(max_size=40), min_size=3, max_size=3, unique=True))
def test_duplicated_last_leaf_changes_the_root(data: list[bytes]) -> None:
    """[a, b, c] and [a, b, c, c] differ: no Bitcoin-style odd-leaf duplication (CVE-2012-2459)."""
    leaves = [leaf_hash(d) for d in data]
    assert root_hash(leaves) != root_hash([*leaves, leaves[-1]])
    assert ref.mth(data) != ref.mth([*data, data[-1]])


@PROPERTY
@given(trees(min_size=2, max_size=64), st.data())
def test_leaf_cannot_stand_in_for_an_interior_node(tree: Tree, data: st.DataObject) -> None:
    """A 64-byte leaf equal to left || right of a node does not reproduce it (RFC 9162 §2.1.1)."""
    height = data.draw(st.integers(1, (len(tree.data)).bit_length() - 1), label="height")
    width = 1 << height
    begin = width * data.draw(st.integers(0, len(tree.data) // width - 1), label="position")
    middle, end = begin + width // 2, begin + width
    left, right = tree.nodes.subtree_hash(begin, middle), tree.nodes.subtree_hash(middle, end)
    node = tree.nodes.subtree_hash(begin, end)
    assert node == node_hash(left, right)
    assert leaf_hash(left + right) != node
    forged = [*tree.leaves[:begin], leaf_hash(left + right), *tree.leaves[end:]]
    assert root_hash(forged) != tree.root(len(tree.data))


@PROPERTY
@given(trees(min_size=0), st.data())
def test_compact_range_matches_root_hash_and_resumes(tree: Tree, data: st.DataObject) -> None:
    compact = CompactRange()
    assert compact.root() == EMPTY_ROOT and compact.hashes == ()
    for size, leaf in enumerate(tree.leaves, start=1):
        compact.append(leaf)
        assert compact.size == size
        assert len(compact.hashes) == size.bit_count()
        assert compact.root() == tree.root(size)
    assert compact.root() == ref.mth(tree.data)
    cut = data.draw(st.integers(0, len(tree.leaves)), label="cut")
    replayed = CompactRange.from_leaf_hashes(tree.leaves[:cut])
    restored = CompactRange.from_state(cut, replayed.hashes)
    for resumed in (replayed, restored):
        for leaf in tree.leaves[cut:]:
            resumed.append(leaf)
        assert resumed.size == compact.size
        assert resumed.hashes == compact.hashes
        assert resumed.root() == compact.root()


@PROPERTY
@given(trees(min_size=0))
def test_compact_range_hashes_are_the_perfect_subtree_roots(tree: Tree) -> None:
    compact = CompactRange.from_leaf_hashes(tree.leaves)
    begin, expected = 0, []
    for height in reversed(range(len(tree.leaves).bit_length())):
        if len(tree.leaves) >> height & 1:
            expected.append(tree.nodes.subtree_hash(begin, begin + (1 << height)))
            begin += 1 << height
    assert list(compact.hashes) == expected


# --- construction: node source contract and cost ----------------------------


class RecordingSource:
    """A NodeSource that records each range and checks it is one the protocol promises."""

    def __init__(self, tree: Tree, size: int) -> None:
        self.tree, self.size = tree, size
        self.ranges: list[tuple[int, int]] = []

    def subtree_hash(self, begin: int, end: int) -> bytes:
        width = end - begin
        aligned = 1 << (width - 1).bit_length()  # the smallest power of two >= width
        assert 0 <= begin < end <= self.size
        assert begin % aligned == 0
        assert width == aligned or end == self.size
        self.ranges.append((begin, end))
        return self.tree.nodes.subtree_hash(begin, end)


@PROPERTY
@given(trees(), st.data())
def test_proofs_ask_only_for_perfect_or_right_edge_subtrees(
    tree: Tree, data: st.DataObject
) -> None:
    new = data.draw(st.integers(1, len(tree.data)), label="new_size")
    index = data.draw(st.integers(0, new - 1), label="index")
    old = data.draw(st.integers(0, new), label="old_size")
    source: NodeSource = RecordingSource(tree, new)  # mypy checks the protocol here
    assert inclusion_proof(index, size=new, nodes=source) == ref.path(index, tree.data[:new])
    assert consistency_proof(old, new_size=new, nodes=source) == (
        ref.proof(old, tree.data[:new]) if old else []
    )


def test_all_proofs_of_a_tree_cost_linear_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    import sessions.core._merkle_tree as tree_module

    calls = 0

    def counting_node_hash(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return node_hash(left, right)

    monkeypatch.setattr(tree_module, "node_hash", counting_node_hash)
    size = 300
    nodes = LeafHashes([leaf_hash(i.to_bytes(2, "big")) for i in range(size)])
    for index in range(size):
        inclusion_proof(index, size=size, nodes=nodes)
    for old in range(size + 1):
        consistency_proof(old, new_size=size, nodes=nodes)
    assert calls < 2 * size


# --- preconditions -----------------------------------------------------------

H = bytes(32)


@pytest.mark.parametrize(
    "call",
    [
        lambda: root_from_inclusion_proof(H, index=0, size=0, proof=[]),
        lambda: root_from_inclusion_proof(H, index=-1, size=2, proof=[H]),
        lambda: root_from_inclusion_proof(H, index=True, size=2, proof=[H]),
        lambda: root_from_inclusion_proof("0" * 32, index=0, size=1, proof=[]),  # type: ignore[arg-type]
        lambda: root_from_inclusion_proof(H, index=0, size=2, proof=[H[:31]]),
        lambda: verify_inclusion(H, index=0, size=1, proof=[], root=b""),
        lambda: root_from_consistency_proof(H, old_size=0, new_size=3, proof=[]),
        lambda: root_from_consistency_proof(H, old_size=3, new_size=2, proof=[]),
        lambda: root_from_consistency_proof(H, old_size=1, new_size=2, proof=[]),
        lambda: verify_consistency(H, b"", old_size=1, new_size=1, proof=[]),
        lambda: verify_consistency(EMPTY_ROOT, H, old_size=0, new_size=0, proof=[]),
        lambda: inclusion_proof(3, size=3, nodes=LeafHashes([H] * 3)),
        lambda: inclusion_proof(0, size=4, nodes=LeafHashes([H] * 3)),
        lambda: consistency_proof(4, new_size=3, nodes=LeafHashes([H] * 3)),
        lambda: consistency_proof(-1, new_size=3, nodes=LeafHashes([H] * 3)),
        lambda: consistency_proof(1, new_size=4, nodes=LeafHashes([H] * 3)),
        lambda: LeafHashes([H, H[:31]]),
        lambda: CompactRange().append(b"short"),
        lambda: CompactRange.from_state(3, [H]),
        lambda: CompactRange.from_state(-1, []),
        lambda: CompactRange.from_state(1, [b"short"]),
    ],
)
def test_bad_arguments_raise_proof_error(call: Callable[[], object]) -> None:
    with pytest.raises(ProofError):
        call()


def test_preconditions_are_checked_before_any_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sessions.core._merkle_proof as proof_module

    def no_hashing(left: bytes, right: bytes) -> bytes:
        raise AssertionError("hashed before checking preconditions")

    monkeypatch.setattr(proof_module, "node_hash", no_hashing)
    with pytest.raises(ProofError):  # last element malformed
        root_from_inclusion_proof(H, index=5, size=8, proof=[H, H, b""])
    with pytest.raises(ProofError):  # one element too many
        root_from_inclusion_proof(H, index=5, size=8, proof=[H] * 4)
    with pytest.raises(ProofError):  # new root malformed
        verify_consistency(H, H[:1], old_size=6, new_size=8, proof=[H] * 3)
    with pytest.raises(ProofError):  # last element malformed
        root_from_consistency_proof(H, old_size=6, new_size=8, proof=[H, H, H + b"\0"])


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(-3, 40),
    size=st.integers(-3, 40),
    proof=st.lists(st.binary(max_size=33), max_size=7),
    leaf=st.binary(max_size=33),
    root=st.binary(max_size=33),
)
def test_garbage_raises_only_proof_error(
    index: int, size: int, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    fails(lambda: verify_inclusion(leaf, index=index, size=size, proof=proof, root=root))
    fails(lambda: verify_consistency(leaf, root, old_size=index, new_size=size, proof=proof))
    fails(lambda: root_from_consistency_proof(leaf, old_size=index, new_size=size, proof=proof))
