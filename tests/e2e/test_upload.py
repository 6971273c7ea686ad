"""The resumable upload protocol over real HTTP: odd sizes, drops, checksums, one writer."""

from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sessions.core import EMPTY_ROOT
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    MIB,
    UPLOAD_TYPE,
    assert_error,
    checksum_header,
    chunks_for,
    committed_prefix_ok,
    create_session,
    finalize,
    head_offset,
    patch,
    replay,
    resume,
    session_bytes,
    upload,
    wait_for,
    wait_writer_free,
    wait_writer_held,
)

pytestmark = pytest.mark.e2e


def test_odd_sized_requests_round_trip(api: httpx.Client) -> None:
    sizes = [MIB + 7, 333, 2 * MIB + MIB // 2, 1]
    data = session_bytes(sum(sizes), seed=1)
    session = create_session(api, {"user": "alice", "protocol": "rdp"}, retention_days=30)
    sid = session["id"]
    assert session["state"] == "recording"
    assert (session["offset"], session["chunk_count"], session["chunk_size"]) == (0, 0, CHUNK)
    assert session["root_hash"] is None and "wrapped_key" not in session
    assert head_offset(api, sid) == 0
    status = api.get(f"/sessions/{sid}/upload").json()
    assert status == {"offset": 0, "chunk_count": 0, "chunk_size": CHUNK, "state": "recording"}

    sent = 0
    for i, size in enumerate(sizes):
        r = patch(api, sid, sent, data[sent:sent + size])
        assert r.status_code == 200, r.text
        sent += size
        expected_chunks = chunks_for(sizes[:i + 1])  # the tail of every request is a chunk
        assert r.json() == {"offset": sent, "chunk_count": expected_chunks}
        assert r.headers["upload-offset"] == str(sent)
        assert head_offset(api, sid) == sent
        assert api.get(f"/sessions/{sid}/upload").json()["chunk_count"] == expected_chunks

    done = finalize(api, sid)
    assert (done["offset"], done["chunk_count"]) == (len(data), chunks_for(sizes))
    shown = api.get(f"/sessions/{sid}").json()
    assert shown["state"] == "completed" and shown["root_hash"] == done["root_hash"]
    assert shown["labels"] == {"user": "alice", "protocol": "rdp"}
    assert shown["retention_days"] == 30

    manifest = api.get(f"/sessions/{sid}/manifest").json()
    lengths = [c["length"] for c in manifest["chunks"]]
    assert lengths == [MIB, 7, 333, MIB, MIB, MIB // 2, 1]
    assert [c["offset"] for c in manifest["chunks"]] == [sum(lengths[:i])
                                                          for i in range(len(lengths))]

    r = replay(api, sid)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-length"] == str(len(data))
    assert r.headers.get("accept-ranges") == "bytes"
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest()

    again = finalize(api, sid)  # idempotent
    assert again["root_hash"] == done["root_hash"] and again["chunk_count"] == done["chunk_count"]


def test_empty_patch_commits_nothing(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    r = patch(api, sid, 0, b"")
    assert r.status_code == 200, r.text
    assert r.json() == {"offset": 0, "chunk_count": 0}
    assert head_offset(api, sid) == 0


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_resume_after_dropped_connection(cluster: Cluster, api: httpx.Client, how: str) -> None:
    data = session_bytes(3 * MIB + 12345, seed=2)
    sid = create_session(api)["id"]
    declared = len(data)
    req = cluster.open_upload(sid, length=declared)
    req.send(data[:MIB + MIB // 2])
    wait_writer_held(api, sid)  # the request is being processed...
    time.sleep(0.5)  # ...and its bytes have crossed loopback
    if how == "rst":
        req.abort()
    else:
        req.half_close()

    dropped_at = wait_writer_free(api, sid)
    assert 0 < dropped_at <= req.sent < declared, (dropped_at, req.sent)
    assert committed_prefix_ok(api, sid, data, dropped_at)
    assert resume(api, sid, data)[0] == dropped_at
    finalize(api, sid)
    r = replay(api, sid)
    assert r.status_code == 200
    assert r.content == data


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256"])  # the CLI's, and curl's example
def test_checksum(api: httpx.Client, algorithm: str) -> None:
    data = session_bytes(MIB + MIB // 2 + 2 * MIB + 99, seed=3)
    first, second = data[:MIB + MIB // 2], data[MIB + MIB // 2:]
    sid = create_session(api)["id"]

    r = patch(api, sid, 0, first, checksum=checksum_header(first, algorithm))
    assert r.status_code == 200, r.text
    assert r.json() == {"offset": len(first), "chunk_count": 2}

    wrong = checksum_header(second[:-1] + bytes([second[-1] ^ 1]), algorithm)
    r = patch(api, sid, len(first), second, checksum=wrong)
    body = assert_error(r, 460, "checksum_mismatch")
    assert body.get("offset", len(first)) == len(first)
    assert head_offset(api, sid) == len(first)  # nothing of the bad request was committed
    assert api.get(f"/sessions/{sid}/upload").json()["chunk_count"] == 2

    for bad in ("md5 " + checksum_header(second, algorithm).split()[1], "sha256 not-base64!!",
                "sha256 AAAA", "crc32c AAAA", "crc32 " + checksum_header(second, "crc32c")[7:]):
        r = patch(api, sid, len(first), second, checksum=bad)
        assert_error(r, 400, "bad_request")
        assert head_offset(api, sid) == len(first)

    # The same bytes with the right digest now go through (staged files get replaced).
    r = patch(api, sid, len(first), second, checksum=checksum_header(second, algorithm))
    assert r.status_code == 200, r.text
    assert r.json() == {"offset": len(data), "chunk_count": 2 + math.ceil(len(second) / CHUNK)}
    finalize(api, sid)
    assert replay(api, sid).content == data
    report = api.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] is True and report["checked"] == report["chunk_count"] == 5, report


def test_one_writer_at_a_time(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(3 * MIB, seed=4)
    sid = create_session(api)["id"]
    held = cluster.open_upload(sid, length=len(data))
    try:
        held.send(data[:MIB + 1000])
        wait_writer_held(api, sid)
        offset = head_offset(api, sid)
        assert offset in (0, CHUNK)

        r = patch(api, sid, offset, data[offset:offset + 4096])
        assert_error(r, 409, "upload_in_progress")
        # The rejected writer changed nothing (the held one may have committed chunk 0 by now).
        assert head_offset(api, sid) in (0, CHUNK)
        # Finalizing under an open upload would cut it short: also refused.
        assert_error(api.post(f"/sessions/{sid}/finalize"), 409, "upload_in_progress")

        held.send(data[held.sent:])
        answer = held.response()
    finally:
        held.close()
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"offset": len(data), "chunk_count": 3}
    assert answer.headers["upload-offset"] == str(len(data))
    finalize(api, sid)
    assert replay(api, sid).content == data


def test_progress_is_committed_while_a_request_is_open(cluster: Cluster,
                                                      api: httpx.Client) -> None:
    """A live recorder streams one long PATCH: chunks whose bytes all arrived get committed
    (HEAD moves, a checkpoint covers them) while the request is still open."""
    data = session_bytes(3 * MIB, seed=6)
    sid = create_session(api)["id"]
    req = cluster.open_upload(sid, length=len(data))
    try:
        req.send(data[:2 * MIB + 10])  # two whole chunks, then the recorder pauses
        try:
            wait_for(lambda: head_offset(api, sid) == 2 * CHUNK, timeout=10,
                     what="the two complete chunks to be committed")
        finally:
            req.send(data[req.sent:])
            answer = req.response()
    finally:
        req.close()
    assert answer.status_code == 200 and answer.json()["offset"] == len(data)


def test_upload_status_during_recording_is_a_readable_prefix(api: httpx.Client) -> None:
    data = session_bytes(2 * MIB + 5, seed=5)
    sid = create_session(api)["id"]
    r = patch(api, sid, 0, data[:MIB + 5])
    assert r.status_code == 200
    # A recording session can be replayed (the committed part) before it is finalized.
    r = replay(api, sid)
    assert r.status_code == 200 and r.content == data[:MIB + 5]
    r = patch(api, sid, MIB + 5, data[MIB + 5:])
    assert r.status_code == 200
    assert replay(api, sid).content == data


def test_chunk_aligned_requests_make_no_empty_chunks(api: httpx.Client) -> None:
    data = session_bytes(4 * MIB, seed=7)
    sid = create_session(api)["id"]
    r = patch(api, sid, 0, data[:2 * MIB])
    assert r.json() == {"offset": 2 * MIB, "chunk_count": 2}
    r = patch(api, sid, 2 * MIB, data[2 * MIB:])
    assert r.json() == {"offset": 4 * MIB, "chunk_count": 4}
    done = finalize(api, sid)
    assert done["chunk_count"] == 4
    manifest = api.get(f"/sessions/{sid}/manifest").json()
    assert [c["length"] for c in manifest["chunks"]] == [MIB] * 4
    assert replay(api, sid).content == data


def test_empty_session(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    done = finalize(api, sid)
    assert (done["offset"], done["chunk_count"]) == (0, 0)
    assert done["root_hash"] == EMPTY_ROOT.hex()  # RFC 9162: the hash of the empty string
    r = replay(api, sid)
    assert r.status_code == 200 and r.content == b""
    assert_error(replay(api, sid, "bytes=0-0"), 416, "range_not_satisfiable")
    checkpoint = api.get(f"/sessions/{sid}/checkpoint")
    assert checkpoint.status_code == 200 and b"\n0\n" in checkpoint.content
    report = api.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] is True and report["chunk_count"] == 0, report


def test_verify_while_recording(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, session_bytes(MIB + 9, seed=8)).status_code == 200
    report = api.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] is True and report["chunk_count"] == 2 and report["checked"] == 2
    # Before finalize, the signed checkpoint checked is the last one kept while recording.
    assert report["signature_ok"] is True and report["metadata_findings"] == []
    status = api.get(f"/sessions/{sid}/upload").json()
    assert status["state"] == "recording"
    finalize(api, sid)
    assert api.get(f"/sessions/{sid}/upload").json()["state"] == "completed"


def test_concurrent_sessions_do_not_interfere(cluster: Cluster) -> None:
    """Four recorders upload at once (odd request sizes), each replays its own bytes."""
    datas = [session_bytes(2 * MIB + 1000 * k + 1, seed=200 + k) for k in range(4)]

    def record(data: bytes) -> tuple[str, bytes]:
        with cluster.client() as client:
            session = create_session(client, {"case": "concurrent"})
            upload(client, session["id"], data, piece=MIB - 17)
            finalize(client, session["id"])
            return session["id"], replay(client, session["id"]).content

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(record, datas))
    assert len({sid for sid, _ in results}) == 4
    for (_, got), data in zip(results, datas, strict=True):
        assert got == data


def test_dropped_connection_with_checksum_commits_nothing(cluster: Cluster,
                                                          api: httpx.Client) -> None:
    """With Upload-Checksum a request is all-or-nothing: a cut one leaves the offset alone."""
    data = session_bytes(3 * MIB, seed=9)
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, data[:MIB]).status_code == 200
    rest = data[MIB:]
    req = cluster.open_upload(sid, length=len(rest), offset=MIB,
                              headers={"Upload-Checksum": checksum_header(rest)})
    req.send(rest[:MIB + 100])
    wait_writer_held(api, sid)
    time.sleep(0.5)
    req.abort()
    assert wait_writer_free(api, sid) == MIB
    r = patch(api, sid, MIB, rest, checksum=checksum_header(rest))
    assert r.status_code == 200 and r.json() == {"offset": len(data), "chunk_count": 3}
    finalize(api, sid)
    assert replay(api, sid).content == data


def test_chunked_transfer_encoding(api: httpx.Client) -> None:
    """A recorder that streams without knowing the length (no Content-Length) is served."""
    data = session_bytes(2 * MIB + 321, seed=10)
    sid = create_session(api)["id"]

    def pieces():  # type: ignore[no-untyped-def]
        for at in range(0, len(data), 100_000):
            yield data[at:at + 100_000]

    r = api.patch(f"/sessions/{sid}/upload", content=pieces(),
                  headers={"Upload-Offset": "0", "Content-Type": UPLOAD_TYPE})
    assert r.status_code == 200, r.text
    assert r.json() == {"offset": len(data), "chunk_count": 3}
    finalize(api, sid)
    assert replay(api, sid).content == data


def test_concurrent_finalize(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(MIB + 5, seed=11)
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, data).status_code == 200

    def fin(_: int) -> tuple[int, str]:
        with cluster.client() as client:
            r = client.post(f"/sessions/{sid}/finalize")
            return r.status_code, r.text

    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(fin, range(3)))
    for status, text in answers:
        # One wins; a concurrent one may be told the session is busy, never a 5xx.
        assert status in (200, 409), (status, text)
        if status == 409:
            assert '"upload_in_progress"' in text or '"invalid_state"' in text, text
    assert any(status == 200 for status, _ in answers)
    final = api.get(f"/sessions/{sid}").json()
    assert final["state"] == "completed"
    assert finalize(api, sid)["root_hash"] == final["root_hash"]
