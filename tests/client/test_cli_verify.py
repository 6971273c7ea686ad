"""Offline verification (`lucid-sessions verify`, `proof`) against sessions built with the core."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest

from sessions.client.verify import VerificationError, check_inclusion, verify_offline
from sessions.core import (
    CIPHER_NAME,
    Checkpoint,
    ChunkEntry,
    ChunkSealer,
    LeafHashes,
    Manifest,
    NoteSigner,
    inclusion_proof,
    new_data_key,
    root_hash,
    sign_checkpoint,
)

SID = "01JDZ0Q3W6Y8E2V7K4N5P9R1ST"
OTHER = "01JDZ0Q3W6Y8E2V7K4N5P9R1SV"
CHUNK = 1024 * 1024


@dataclass
class Session:
    signer: NoteSigner
    chunks: dict[int, bytes]
    manifest: bytes
    checkpoint: bytes

    @property
    def key(self) -> str:
        return self.signer.verifier().key_text()

    def verify(self, **overrides: object) -> object:
        args: dict[str, object] = {
            "verifier_key": self.key, "manifest": self.manifest, "checkpoint": self.checkpoint,
            "fetch_chunk": self.chunks.get} | overrides
        return verify_offline(SID, **args)  # type: ignore[arg-type]


def build(n_chunks: int = 5, *, session_id: str = SID) -> Session:
    signer = NoteSigner.generate("lucid-test")
    sealer = ChunkSealer(new_data_key(), session_id=session_id)
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not keys
    sealed, entries, offset = {}, [], 0
    for i in range(n_chunks):
        length = CHUNK if i < n_chunks - 1 else 1000
        chunk = sealer.seal(rng.randbytes(length), index=i)
        sealed[i] = chunk.data
        entries.append(ChunkEntry(index=i, offset=offset, length=length,
                                  sealed_length=chunk.sealed_length, leaf_hash=chunk.leaf_hash,
                                  compressed=chunk.compressed))
        offset += length
    root = root_hash([e.leaf_hash for e in entries])
    unsigned = Manifest(session_id=session_id, labels={"host": "pc"},
                        created_at="2025-11-27T12:00:00Z", plaintext_size=offset,
                        sealed_size=sum(e.sealed_length for e in entries), chunk_count=n_chunks,
                        chunk_size=CHUNK, zstd_level=3, cipher=CIPHER_NAME, format_version=1,
                        chunks=tuple(entries), root_hash=root, checkpoint="")
    checkpoint = sign_checkpoint(Checkpoint(f"lucid-test/sessions/{session_id}", n_chunks, root,
                                            (unsigned.checkpoint_extension(),)), signer)
    manifest = dataclasses.replace(unsigned, checkpoint=checkpoint.decode("utf-8"))
    return Session(signer, sealed, manifest.to_json(), checkpoint)


@pytest.fixture(scope="module")
def session() -> Session:
    return build()


def test_an_intact_session_verifies(session: Session) -> None:
    report = session.verify()
    assert report.ok, report
    assert (report.checked, report.chunk_count) == (5, 5)


def test_an_altered_chunk_is_reported(session: Session) -> None:
    chunks = dict(session.chunks)
    altered = bytearray(chunks[2])
    altered[-1] ^= 1
    chunks[2] = bytes(altered)
    report = session.verify(fetch_chunk=chunks.get)
    assert not report.ok
    assert report.bad_chunks == [(2, "altered (leaf hash differs from the manifest)")]
    assert report.signature_ok and not report.root_ok


def test_missing_swapped_and_garbage_chunks_are_reported(session: Session) -> None:
    chunks = dict(session.chunks)
    del chunks[0]
    chunks[1], chunks[3] = chunks[3], chunks[1]
    chunks[4] = b"not a sealed chunk at all, just some bytes of the right kind"
    report = session.verify(fetch_chunk=chunks.get)
    assert dict(report.bad_chunks) == {0: "missing", 1: "altered (header names chunk 3)",
                                       3: "altered (header names chunk 1)",
                                       4: "altered (malformed header)"}


def test_a_key_of_another_node_fails(session: Session) -> None:
    stranger = NoteSigner.generate("lucid-test").verifier().key_text()
    report = session.verify(verifier_key=stranger)
    assert not report.ok
    assert not report.signature_ok
    assert "signature does not verify" in report.problems[0]


def test_a_checkpoint_of_another_session_fails(session: Session) -> None:
    root = root_hash([])
    other = sign_checkpoint(Checkpoint(f"lucid-test/sessions/{OTHER}", 0, root), session.signer)
    report = session.verify(checkpoint=other)
    assert not report.ok
    assert "origin" in report.problems[0]


def test_a_stale_checkpoint_disagrees_with_the_manifest(session: Session) -> None:
    leaves = LeafHashes([e for e in _leaves(session)[:3]])
    cp = Checkpoint(f"lucid-test/sessions/{SID}", 3, leaves.subtree_hash(0, 3))
    report = session.verify(checkpoint=sign_checkpoint(cp, session.signer))
    assert not report.ok
    assert any("differs from the signed checkpoint" in p for p in report.problems)


def test_a_relabelled_manifest_fails(session: Session) -> None:
    report = session.verify(manifest=session.manifest.replace(b'"host":"pc"', b'"host":"px"'))
    assert not report.ok
    assert any("labels and chunk list" in p for p in report.problems), report.problems


def test_a_tampered_manifest_fails(session: Session) -> None:
    leaf = _leaves(session)[1].hex().encode()
    forged = bytes(32).hex().encode()
    report = session.verify(manifest=session.manifest.replace(leaf, forged))
    assert not report.ok
    assert report.problems == ["manifest: root hash does not match the leaf hashes"]
    report = session.verify(manifest=session.manifest.replace(b'"chunk_count":5',
                                                               b'"chunk_count":4'))
    assert not report.ok


def test_a_malformed_key_fails(session: Session) -> None:
    report = session.verify(verifier_key="not a key")
    assert not report.ok
    assert "verifier key" in report.problems[0]


def test_sampling_checks_a_subset(session: Session) -> None:
    seen: list[int] = []
    report = session.verify(sample=40.0, on_chunk=seen.append, rng=random.Random(1))  # noqa: S311
    assert report.ok
    assert report.checked == len(seen) == 2
    assert seen == sorted(set(seen))


def test_an_empty_session_verifies() -> None:
    assert build(0).verify().ok


def test_inclusion_proofs_verify_against_the_signed_checkpoint(session: Session) -> None:
    leaves = _leaves(session)
    nodes = LeafHashes(leaves)
    proof = {"index": 3, "size": 5, "leaf_hash": leaves[3].hex(),
             "proof": [h.hex() for h in inclusion_proof(3, size=5, nodes=nodes)]}
    cp = check_inclusion(proof, checkpoint=session.checkpoint, verifier_key=session.key,
                         session_id=SID)
    assert cp.size == 5
    with pytest.raises(VerificationError, match="does not lead"):
        check_inclusion(proof | {"leaf_hash": leaves[2].hex()}, checkpoint=session.checkpoint,
                        verifier_key=session.key, session_id=SID)
    with pytest.raises(VerificationError, match="checkpoint is for 5"):
        check_inclusion(proof | {"size": 4}, checkpoint=session.checkpoint,
                        verifier_key=session.key, session_id=SID)
    with pytest.raises(VerificationError, match="malformed"):
        check_inclusion({"index": 3}, checkpoint=session.checkpoint, verifier_key=session.key,
                        session_id=SID)
    with pytest.raises(VerificationError, match="origin"):
        check_inclusion(proof, checkpoint=session.checkpoint, verifier_key=session.key,
                        session_id=OTHER)


def _leaves(session: Session) -> list[bytes]:
    return [Manifest.from_json(session.manifest).chunks[i].leaf_hash for i in range(5)]
