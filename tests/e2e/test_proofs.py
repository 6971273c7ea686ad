"""Checkpoints, inclusion and consistency proofs, checked with the core library only."""

from __future__ import annotations

import httpx
import pytest

from sessions.core import (
    Checkpoint,
    CheckpointError,
    Manifest,
    NoteError,
    NoteSigner,
    NoteVerifier,
    ProofError,
    leaf_hash,
    open_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from tests.e2e.support import (
    MIB,
    NODE_NAME,
    assert_error,
    create_session,
    finalize,
    patch,
    session_bytes,
)

pytestmark = pytest.mark.e2e


def _checkpoint(api: httpx.Client, node: dict[str, str], sid: str,
                size: int | None = None) -> Checkpoint:
    r = api.get(f"/sessions/{sid}/checkpoint", params={} if size is None else {"size": size})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    verifier = NoteVerifier.from_key_text(node["verifier_key"])
    origin = f"{node['key_name']}/sessions/{sid}"
    return open_checkpoint(r.content, verifier=verifier, origin=origin)


def _inclusion(api: httpx.Client, sid: str, index: int, size: int | None = None
               ) -> dict[str, object]:
    params = {"index": index} | ({} if size is None else {"size": size})
    r = api.get(f"/sessions/{sid}/proof/inclusion", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _consistency(api: httpx.Client, sid: str, old: int, new: int) -> list[bytes]:
    r = api.get(f"/sessions/{sid}/proof/consistency", params={"from": old, "to": new})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["from_size"], body["to_size"]) == (old, new)
    return [bytes.fromhex(h) for h in body["proof"]]


def test_node_key(node: dict[str, str]) -> None:
    assert node["key_name"] == NODE_NAME
    assert node["origin_prefix"] == f"{NODE_NAME}/sessions/"
    verifier = NoteVerifier.from_key_text(node["verifier_key"])
    assert verifier.name == NODE_NAME
    assert "PRIVATE" not in node["verifier_key"]


def test_live_checkpoints_and_proofs(api: httpx.Client, node: dict[str, str]) -> None:
    pieces = [2 * MIB + 100, MIB + MIB // 3, 3 * MIB + 1]  # chunk counts 3, 5, 9
    data = session_bytes(sum(pieces), seed=40)
    sid = create_session(api, {"user": "proofs"})["id"]
    live: list[Checkpoint] = []
    offset = 0
    for size in pieces:
        r = patch(api, sid, offset, data[offset:offset + size])
        assert r.status_code == 200, r.text
        offset += size
        cp = _checkpoint(api, node, sid)  # while recording
        assert cp.size == r.json()["chunk_count"]
        live.append(cp)
    a, b, c = live
    assert (a.size, b.size, c.size) == (3, 5, 9)

    # Consistency between the live checkpoints, as an auditor watching the recording does.
    for old, new in [(a, b), (b, c), (a, c)]:
        proof = _consistency(api, sid, old.size, new.size)
        verify_consistency(old.root_hash, new.root_hash, old_size=old.size, new_size=new.size,
                           proof=proof)

    done = finalize(api, sid)
    final = _checkpoint(api, node, sid)
    assert final.size == 9 and final.root_hash.hex() == done["root_hash"]
    assert final.root_hash == c.root_hash  # nothing was appended after the last PATCH
    earlier = _checkpoint(api, node, sid, size=a.size)  # a historical checkpoint, re-signed
    assert earlier.root_hash == a.root_hash

    # Every chunk is in the final tree, and its sealed bytes are what the leaf commits to.
    for i in range(final.size):
        body = _inclusion(api, sid, i)
        assert (body["index"], body["size"]) == (i, final.size)
        assert body["root_hash"] == final.root_hash.hex()
        sealed = api.get(f"/sessions/{sid}/chunks/{i}")
        assert sealed.status_code == 200
        assert sealed.headers["content-type"].startswith("application/octet-stream")
        leaf = leaf_hash(sealed.content)
        assert body["leaf_hash"] == leaf.hex()
        proof = [bytes.fromhex(h) for h in body["proof"]]  # type: ignore[union-attr]
        verify_inclusion(leaf, index=i, size=final.size, proof=proof, root=final.root_hash)

    # Inclusion in an older tree verifies against the older signed root.
    for i in range(a.size):
        body = _inclusion(api, sid, i, size=a.size)
        proof = [bytes.fromhex(h) for h in body["proof"]]  # type: ignore[union-attr]
        verify_inclusion(bytes.fromhex(str(body["leaf_hash"])), index=i, size=a.size,
                         proof=proof, root=a.root_hash)

    # The manifest is signed by the same checkpoint and lists the same leaves.
    manifest = Manifest.from_json(api.get(f"/sessions/{sid}/manifest").content)
    manifest.check(verifier=NoteVerifier.from_key_text(node["verifier_key"]),
                   origin=f"{NODE_NAME}/sessions/{sid}")
    assert manifest.root_hash == final.root_hash and manifest.chunk_count == 9
    assert manifest.plaintext_size == len(data)


def test_tampered_proofs_fail(api: httpx.Client, node: dict[str, str]) -> None:
    data = session_bytes(6 * MIB + 5, seed=41)
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, data).status_code == 200
    cp = _checkpoint(api, node, sid)
    assert cp.size == 7
    body = _inclusion(api, sid, 2)
    leaf = bytes.fromhex(str(body["leaf_hash"]))
    proof = [bytes.fromhex(h) for h in body["proof"]]  # type: ignore[union-attr]
    verify_inclusion(leaf, index=2, size=cp.size, proof=proof, root=cp.root_hash)
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 0x10]) + bad[k][1:]
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index=2, size=cp.size, proof=bad, root=cp.root_hash)
    with pytest.raises(ProofError):  # the right proof for the wrong index
        verify_inclusion(leaf, index=3, size=cp.size, proof=proof, root=cp.root_hash)

    old = _checkpoint(api, node, sid, size=3)
    cproof = _consistency(api, sid, 3, 7)
    verify_consistency(old.root_hash, cp.root_hash, old_size=3, new_size=7, proof=cproof)
    bad = [cproof[0][:-1] + bytes([cproof[0][-1] ^ 1]), *cproof[1:]]
    with pytest.raises(ProofError):
        verify_consistency(old.root_hash, cp.root_hash, old_size=3, new_size=7, proof=bad)
    with pytest.raises(ProofError):  # swapped roots
        verify_consistency(cp.root_hash, old.root_hash, old_size=3, new_size=7, proof=cproof)


def test_checkpoint_only_opens_with_the_node_key(api: httpx.Client, node: dict[str, str]) -> None:
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, session_bytes(MIB + 1, seed=42)).status_code == 200
    note = api.get(f"/sessions/{sid}/checkpoint").content
    stranger = NoteSigner.generate(NODE_NAME).verifier()  # same name, other key
    with pytest.raises(NoteError):
        open_checkpoint(note, verifier=stranger)
    verifier = NoteVerifier.from_key_text(node["verifier_key"])
    with pytest.raises(CheckpointError):  # another session's origin
        open_checkpoint(note, verifier=verifier, origin=f"{NODE_NAME}/sessions/{'0' * 26}")
    text = bytearray(note)
    text[text.index(b"\n") + 1] ^= 0x01  # change the size line
    with pytest.raises(NoteError):
        open_checkpoint(bytes(text), verifier=verifier)


@pytest.mark.parametrize("path,params,code", [
    ("proof/inclusion", {"index": 2}, "invalid_parameter"),             # index >= size
    ("proof/inclusion", {"index": 0, "size": 3}, "invalid_parameter"),  # size > chunk_count
    ("proof/inclusion", {"index": -1}, "invalid_parameter"),
    ("proof/consistency", {"from": 2, "to": 1}, "invalid_parameter"),
    ("proof/consistency", {"from": 0, "to": 5}, "invalid_parameter"),
    ("checkpoint", {"size": 3}, "invalid_parameter"),
])
def test_bad_proof_parameters(api: httpx.Client, path: str, params: dict[str, int],
                              code: str) -> None:
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, session_bytes(MIB + 1, seed=43)).status_code == 200  # 2 chunks
    assert_error(api.get(f"/sessions/{sid}/{path}", params=params), 422, code)
