"""Stored metadata edited behind the services' back: verify names the row, not the chunk.

Every edit goes straight into storage's SQLite file (as an attacker with the disk,
or a bad sector, would) while the services run.  The processor checks what storage
says against what it signed: a completed session's manifest, a recording session's
last signed checkpoint (docs/architecture.md, "Integrity").
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import httpx
import pytest

from sessions.core import NoteVerifier, leaf_hash, open_checkpoint, verify_inclusion
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    MIB,
    assert_error,
    create_session,
    patch,
    recorded_session,
    replay,
    session_bytes,
    upload,
)

pytestmark = pytest.mark.e2e

SIZE = 3 * MIB + 100  # chunks 0..2 full, chunk 3 short


def sql(cluster: Cluster, statement: str, *params: object) -> int:
    """Run one statement on storage's metadata file; return the number of rows it changed."""
    db = sqlite3.connect(cluster.data_dir / "storage" / "metadata.sqlite3",
                         isolation_level=None, timeout=10.0)
    try:
        return db.execute(statement, params).rowcount
    finally:
        db.close()


def verify(api: httpx.Client, sid: str, sample: float | None = None) -> dict[str, Any]:
    r = api.post(f"/sessions/{sid}/verify", params={} if sample is None else {"sample": sample})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def named(report: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(f["what"], f["index"]) for f in report["metadata_findings"]}


def completed(api: httpx.Client, seed: int, labels: dict[str, str] | None = None
              ) -> tuple[str, bytes]:
    data = session_bytes(SIZE, seed=seed)
    session = recorded_session(api, data, labels=labels, piece=SIZE)
    assert session["chunk_count"] == 4
    return session["id"], data


def assert_untouched_proofs_hold(api: httpx.Client, node: dict[str, str], sid: str,
                                 indexes: range) -> None:
    """Every inclusion proof verifies against the signed checkpoint and the served bytes."""
    signed = api.get(f"/sessions/{sid}/checkpoint")
    assert signed.status_code == 200, signed.text
    cp = open_checkpoint(signed.content, verifier=NoteVerifier.from_key_text(node["verifier_key"]))
    for i in indexes:
        proof = api.get(f"/sessions/{sid}/proof/inclusion", params={"index": i}).json()
        assert proof["root_hash"] == cp.root_hash.hex(), proof
        sealed = api.get(f"/sessions/{sid}/chunks/{i}").content
        assert leaf_hash(sealed).hex() == proof["leaf_hash"]
        verify_inclusion(leaf_hash(sealed), index=i, size=cp.size, root=cp.root_hash,
                         proof=[bytes.fromhex(h) for h in proof["proof"]])


# -- the two defects of issue 12 ----------------------------------------------------------------

def test_a_forged_stored_root_is_reported_and_never_shown(cluster: Cluster, api: httpx.Client,
                                                          node: dict[str, str]) -> None:
    sid, data = completed(api, seed=70)
    signed_root = api.get(f"/sessions/{sid}").json()["root_hash"]
    assert sql(cluster, "UPDATE sessions SET root_hash = randomblob(32) WHERE id = ?", sid) == 1

    shown = api.get(f"/sessions/{sid}").json()
    assert shown["root_hash"] == signed_root  # the signed root, never the forged one
    assert shown["integrity"] == "mismatch"

    report = verify(api, sid)
    assert report["ok"] is False
    assert named(report) == {("root_hash", None)}
    assert report["bad_chunks"] == []
    # The recording itself is intact: its chunks rebuild the signed root.
    assert (report["root_ok"], report["signature_ok"]) == (True, True)
    assert replay(api, sid).content == data
    assert_untouched_proofs_hold(api, node, sid, range(4))


def test_a_forged_leaf_row_is_metadata_damage_not_chunk_damage(
        cluster: Cluster, api: httpx.Client, node: dict[str, str]) -> None:
    sid, data = completed(api, seed=71)
    assert sql(cluster, "UPDATE chunks SET leaf_hash = randomblob(32) "
                        "WHERE session_id = ? AND idx = 2", sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False
    assert report["bad_chunks"] == []  # chunk 2's file is intact
    assert named(report) == {("leaf_hash", 2)}
    assert (report["root_ok"], report["signature_ok"]) == (True, True)
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "ok"  # the record itself is fine
    assert replay(api, sid).content == data
    assert_untouched_proofs_hold(api, node, sid, range(4))  # proofs come from the manifest


# -- every metadata row of a completed session ----------------------------------------------------

EDITS: dict[str, tuple[str, set[tuple[str, int | None]], bool]] = {
    # name: (statement with one ? for the id, findings, the record's integrity is a mismatch)
    "chunk-offset": ("UPDATE chunks SET plain_offset = plain_offset + 1 "
                     "WHERE session_id = ? AND idx = 1", {("offset", 1)}, False),
    "chunk-length": ("UPDATE chunks SET length = length - 1 WHERE session_id = ? AND idx = 3",
                     {("length", 3)}, False),
    "chunk-sealed-length": ("UPDATE chunks SET sealed_length = sealed_length + 5 "
                            "WHERE session_id = ? AND idx = 0", {("sealed_length", 0)}, False),
    "chunk-compressed": ("UPDATE chunks SET compressed = 1 - compressed "
                         "WHERE session_id = ? AND idx = 1", {("compressed", 1)}, False),
    "size": ("UPDATE sessions SET plain_offset = plain_offset + 4096 WHERE id = ?",
             {("offset", None)}, True),
    "sealed-bytes": ("UPDATE sessions SET sealed_bytes = sealed_bytes - 1 WHERE id = ?",
                     {("sealed_bytes", None)}, True),
    "chunk-count-up": ("UPDATE sessions SET chunk_count = 9 WHERE id = ?",
                       {("chunk_count", None)}, True),
    "labels": ("UPDATE session_labels SET value = 'mallory' WHERE session_id = ? "
               "AND key = 'user'", {("labels", None)}, True),
    "created-at": ("UPDATE sessions SET created_at = '2001-01-01T00:00:00.000000Z' "
                   "WHERE id = ?", {("created_at", None)}, True),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_each_edited_row_is_pinpointed(cluster: Cluster, api: httpx.Client,
                                       node: dict[str, str], edit: str) -> None:
    statement, expected, record_mismatch = EDITS[edit]
    sid, data = completed(api, seed=72, labels={"user": "alice"})
    before = api.get(f"/sessions/{sid}").json()
    assert sql(cluster, statement, sid) == 1

    report = verify(api, sid)
    assert report["ok"] is False
    assert named(report) == expected, report["metadata_findings"]
    assert report["bad_chunks"] == [] and report["root_ok"] is True
    assert report["chunk_count"] == 4  # the signed count, whatever the record says

    shown = api.get(f"/sessions/{sid}").json()
    assert shown["integrity"] == ("mismatch" if record_mismatch else "ok")
    for field in ("root_hash", "offset", "chunk_count", "sealed_bytes", "labels", "created_at"):
        assert shown[field] == before[field], field  # shown from the signed manifest
    assert replay(api, sid).content == data
    assert_untouched_proofs_hold(api, node, sid, range(4))


def test_a_lowered_chunk_count_is_metadata_damage(cluster: Cluster, api: httpx.Client) -> None:
    sid, _ = completed(api, seed=73)
    assert sql(cluster, "UPDATE sessions SET chunk_count = 2 WHERE id = ?", sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False
    assert ("chunk_count", None) in named(report)
    assert {("chunk_row", 2), ("chunk_row", 3)} <= named(report)  # storage hides those rows
    assert report["bad_chunks"] == []  # the files are fine: storage will not serve them
    assert report["root_ok"] is None and report["checked"] == 2
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "mismatch"


@pytest.mark.parametrize("state", ["recording", "failed"])
def test_an_edited_state_is_reported_and_blocks_writes(cluster: Cluster, api: httpx.Client,
                                                       state: str) -> None:
    sid, data = completed(api, seed=74)
    assert sql(cluster, "UPDATE sessions SET state = ? WHERE id = ?", state, sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False
    assert ("state", None) in named(report)
    assert report["bad_chunks"] == [] and report["root_ok"] is True
    shown = api.get(f"/sessions/{sid}").json()
    assert shown["integrity"] == "mismatch"
    if state == "recording":
        # A finalized session's anchor is final: nothing more is signed onto it.
        assert_error(patch(api, sid, SIZE, b"more"), 502, "metadata_corrupt")
        assert_error(api.post(f"/sessions/{sid}/finalize"), 502, "metadata_corrupt")


def test_a_completed_state_without_a_manifest_is_reported(cluster: Cluster,
                                                          api: httpx.Client) -> None:
    data = session_bytes(MIB + 10, seed=75)
    sid = recorded_session(api, data, piece=len(data), final=False)["id"]
    assert sql(cluster, "UPDATE sessions SET state = 'completed' WHERE id = ?", sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False and ("state", None) in named(report)
    assert report["bad_chunks"] == []
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "mismatch"


def test_a_forged_manifest_fails_its_signature(cluster: Cluster, api: httpx.Client) -> None:
    sid, _ = completed(api, seed=76)
    assert sql(cluster, "UPDATE sessions SET manifest = CAST(replace(CAST(manifest AS TEXT), "
                        "'\"labels\":{}', '\"labels\":{\"user\":\"mallory\"}') AS BLOB) "
                        "WHERE id = ?", sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False and report["signature_ok"] is False
    assert ("manifest", None) in named(report)
    assert_error(replay(api, sid), 502, "metadata_corrupt")
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "mismatch"


# -- chunk files: each damage is a bad chunk and nothing else ------------------------------------

def _flip(path: os.PathLike[str]) -> None:
    blob = bytearray(open(path, "rb").read())  # noqa: SIM115 - tiny helper
    blob[len(blob) // 3] ^= 0x01
    with open(path, "wb") as f:
        f.write(blob)


def _truncate(path: os.PathLike[str]) -> None:
    os.truncate(path, os.path.getsize(path) - 7)


def _append(path: os.PathLike[str]) -> None:
    with open(path, "ab") as f:
        f.write(b"\x00")


FILE_DAMAGE = {"bit-flip": _flip, "truncation": _truncate, "appended-byte": _append,
               "deletion": os.unlink}


@pytest.mark.parametrize("damage", list(FILE_DAMAGE), ids=list(FILE_DAMAGE))
def test_each_damaged_chunk_file_is_pinpointed(cluster: Cluster, api: httpx.Client,
                                               node: dict[str, str], damage: str) -> None:
    sid, data = completed(api, seed=77)
    FILE_DAMAGE[damage](cluster.chunk_file(sid, 1))
    report = verify(api, sid)
    reason = "missing" if damage == "deletion" else "altered"
    assert report["bad_chunks"] == [{"index": 1, "reason": reason}]
    assert report["metadata_findings"] == []
    assert (report["ok"], report["root_ok"], report["signature_ok"]) == (False, False, True)
    assert_untouched_proofs_hold(api, node, sid, range(2, 4))
    r = replay(api, sid, f"bytes={2 * MIB}-")
    assert r.status_code == 206 and r.content == data[2 * MIB:]


def test_two_swapped_chunk_files_are_both_pinpointed(cluster: Cluster, api: httpx.Client,
                                                     node: dict[str, str]) -> None:
    sid, _ = completed(api, seed=78)
    a, b = cluster.chunk_file(sid, 0), cluster.chunk_file(sid, 2)
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    report = verify(api, sid)
    assert report["bad_chunks"] == [{"index": 0, "reason": "altered"},
                                    {"index": 2, "reason": "altered"}]
    assert report["metadata_findings"] == [] and report["ok"] is False
    assert_untouched_proofs_hold(api, node, sid, range(3, 4))


def test_chunk_and_row_damage_together_are_told_apart(cluster: Cluster,
                                                      api: httpx.Client) -> None:
    sid, _ = completed(api, seed=79)
    _flip(cluster.chunk_file(sid, 0))
    assert sql(cluster, "UPDATE chunks SET leaf_hash = randomblob(32) "
                        "WHERE session_id = ? AND idx = 3", sid) == 1
    report = verify(api, sid)
    assert report["bad_chunks"] == [{"index": 0, "reason": "altered"}]
    assert named(report) == {("leaf_hash", 3)}


# -- sessions still recording: checked against the last signed checkpoint -----------------------

def recording(api: httpx.Client, seed: int) -> tuple[str, bytes]:
    data = session_bytes(SIZE, seed=seed)
    sid = create_session(api)["id"]
    upload(api, sid, data, piece=2 * MIB)  # two requests: the anchor moves twice
    return sid, data


def test_a_forged_leaf_row_while_recording_is_found_and_never_signed(
        cluster: Cluster, api: httpx.Client) -> None:
    sid, data = recording(api, seed=80)
    assert sql(cluster, "UPDATE chunks SET leaf_hash = randomblob(32) "
                        "WHERE session_id = ? AND idx = 1", sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False
    assert report["bad_chunks"] == []  # chunk 1's bytes prove the signed leaf
    assert named(report) == {("leaf_hash", 1)}
    assert (report["root_ok"], report["signature_ok"]) == (True, True)
    # Nothing is signed over the edited rows, and no proof is built from them.
    assert_error(api.get(f"/sessions/{sid}/checkpoint", params={"size": 2}), 502,
                 "metadata_corrupt")
    assert_error(api.get(f"/sessions/{sid}/proof/inclusion", params={"index": 0}), 502,
                 "metadata_corrupt")
    assert_error(api.post(f"/sessions/{sid}/finalize"), 502, "metadata_corrupt")
    assert_error(replay(api, sid), 502, "metadata_corrupt")


def test_a_forged_leaf_row_is_refused_after_a_processor_restart(cluster: Cluster,
                                                                api: httpx.Client) -> None:
    sid, data = recording(api, seed=81)
    assert sql(cluster, "UPDATE chunks SET leaf_hash = randomblob(32) "
                        "WHERE session_id = ? AND idx = 0", sid) == 1
    cluster.restart("processor")  # no tree left in memory: it must be rebuilt from storage
    cluster.wait_ready("api")
    body = assert_error(patch(api, sid, SIZE, b"x" * 100), 502, "metadata_corrupt")
    assert body["signed_size"] == 4 and body["chunk_count"] == 4
    assert_error(api.get(f"/sessions/{sid}/checkpoint"), 502, "metadata_corrupt")


def test_an_edited_offset_while_recording_is_refused(cluster: Cluster,
                                                     api: httpx.Client) -> None:
    sid, data = recording(api, seed=82)
    assert sql(cluster, "UPDATE sessions SET plain_offset = plain_offset - 10 WHERE id = ?",
               sid) == 1
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "mismatch"
    # A recorder resuming at the forged offset would duplicate 10 bytes: refused.
    assert_error(patch(api, sid, SIZE - 10, data[-10:] + b"more"), 502, "metadata_corrupt")
    report = verify(api, sid)
    assert report["ok"] is False and ("offset", None) in named(report)
    assert report["bad_chunks"] == []


def test_an_edited_chunk_length_while_recording_is_a_row_finding(cluster: Cluster,
                                                                 api: httpx.Client) -> None:
    sid, _ = recording(api, seed=83)
    assert sql(cluster, "UPDATE chunks SET sealed_length = sealed_length + 1 "
                        "WHERE session_id = ? AND idx = 3", sid) == 1
    report = verify(api, sid)
    assert report["ok"] is False and report["bad_chunks"] == []
    assert ("sealed_length", 3) in named(report)


def test_a_damaged_chunk_file_while_recording_is_a_bad_chunk(cluster: Cluster,
                                                             api: httpx.Client) -> None:
    sid, data = recording(api, seed=84)
    _flip(cluster.chunk_file(sid, 2))
    report = verify(api, sid)
    assert report["bad_chunks"] == [{"index": 2, "reason": "altered"}]
    assert report["metadata_findings"] == [] and report["root_ok"] is False


def test_a_clean_recording_session_verifies_and_is_anchored(api: httpx.Client) -> None:
    sid, data = recording(api, seed=85)
    report = verify(api, sid)
    assert report["ok"] is True and report["metadata_findings"] == []
    assert (report["root_ok"], report["signature_ok"]) == (True, True)
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "ok"
    upload(api, sid, data + b"tail", start=SIZE)
    assert api.post(f"/sessions/{sid}/finalize").status_code == 200
    assert verify(api, sid)["ok"] is True


def test_edited_labels_while_recording_are_found_and_never_sealed(cluster: Cluster,
                                                                  api: httpx.Client) -> None:
    sid = create_session(api, {"user": "alice", "host": "ws-1"})["id"]
    upload(api, sid, session_bytes(MIB + 1, seed=86), piece=MIB + 1)
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "ok"
    assert sql(cluster, "UPDATE session_labels SET value = 'mallory' WHERE session_id = ? "
                        "AND key = 'user'", sid) == 1
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "mismatch"
    report = verify(api, sid)
    assert report["ok"] is False and named(report) == {("labels", None)}
    assert report["bad_chunks"] == []
    # The forged labels are not signed into a manifest, nor anchored by another upload.
    assert_error(api.post(f"/sessions/{sid}/finalize"), 502, "metadata_corrupt")
    assert_error(patch(api, sid, MIB + 1, b"more"), 502, "metadata_corrupt")


def test_a_lowered_chunk_count_while_recording_is_found_and_refused(cluster: Cluster,
                                                                    api: httpx.Client) -> None:
    sid, _ = recording(api, seed=87)
    assert sql(cluster, "UPDATE sessions SET chunk_count = 3 WHERE id = ?", sid) == 1
    assert api.get(f"/sessions/{sid}").json()["integrity"] == "mismatch"
    report = verify(api, sid)
    assert report["ok"] is False and report["bad_chunks"] == []
    assert ("chunk_count", None) in named(report)
    assert all(f["what"] != "leaf_hash" for f in report["metadata_findings"]), report
    assert report["root_ok"] is None  # storage hides the last chunk: no root to rebuild
    assert_error(patch(api, sid, SIZE, b"more"), 502, "metadata_corrupt")
