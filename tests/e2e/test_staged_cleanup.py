"""Sealed chunks of a rejected request do not stay on disk (issue 12, defect 3).

Counted on disk, with the three services as real processes: after a request
fails, after finalize, and after a crash, a session's directory holds exactly
its committed chunks.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    assert_error,
    checksum_header,
    create_session,
    finalize,
    head_offset,
    patch,
    replay,
    session_bytes,
    wait_for,
    wait_writer_held,
)

pytestmark = pytest.mark.e2e


def chunk_files(cluster: Cluster, sid: str) -> list[str]:
    """Return the names of a session's files on disk, temp files included."""
    directory: Path = cluster.session_dir(sid)
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def committed_names(count: int) -> list[str]:
    return [f"{i:010d}.lcs" for i in range(count)]


def test_a_rejected_checksum_request_leaves_no_chunk_files(cluster: Cluster,
                                                           api: httpx.Client) -> None:
    """The issue's case: 1,000 bytes, then a large PATCH with a wrong checksum, then finalize."""
    first = session_bytes(1000, seed=1201)
    rest = session_bytes(3 * CHUNK + CHUNK // 2, seed=1202)  # 4 chunks, sealed then refused
    sid = create_session(api, {"case": "rejected-checksum"})["id"]
    assert patch(api, sid, 0, first).status_code == 200
    assert chunk_files(cluster, sid) == committed_names(1)

    r = patch(api, sid, len(first), rest, checksum=checksum_header(rest + b"x"))
    assert_error(r, 460, "checksum_mismatch")
    assert chunk_files(cluster, sid) == committed_names(1), "the refused request left files"

    done = finalize(api, sid)
    assert (done["chunk_count"], done["offset"]) == (1, len(first))
    assert chunk_files(cluster, sid) == committed_names(1)
    assert replay(api, sid).content == first
    assert api.post(f"/sessions/{sid}/verify").json()["ok"] is True


def test_a_request_cut_short_leaves_only_committed_chunks(cluster: Cluster,
                                                          api: httpx.Client) -> None:
    """With a checksum a cut body commits nothing, and what it staged goes with it."""
    data = session_bytes(4 * CHUNK, seed=1203)
    sid = create_session(api, {"case": "cut-checksum"})["id"]
    req = cluster.open_upload(sid, length=len(data),
                              headers={"Upload-Checksum": checksum_header(data)})
    try:
        req.send(data[:3 * CHUNK])
        wait_writer_held(api, sid)
        wait_for(lambda: len(chunk_files(cluster, sid)) >= 2, timeout=20,
                 what="the first chunks to be staged")
        req.abort()
    finally:
        req.close()
    wait_for(lambda: chunk_files(cluster, sid) == [], timeout=20,
             what="the cut request's staged chunks to be discarded")
    assert head_offset(api, sid) == 0
    assert patch(api, sid, 0, data, checksum=checksum_header(data)).status_code == 200
    assert chunk_files(cluster, sid) == committed_names(4)


def test_a_crash_leaves_no_orphan(restartable: Cluster, api: httpx.Client) -> None:
    """A processor killed mid-request cannot discard; storage sweeps at finalize and at start."""
    cluster = restartable
    first = session_bytes(1000, seed=1204)
    data = session_bytes(4 * CHUNK, seed=1205)
    sids = []
    for case in ("crash-then-restart", "crash-then-finalize"):
        sid = create_session(api, {"case": case})["id"]
        assert patch(api, sid, 0, first).status_code == 200
        sids.append(sid)
    reqs = [cluster.open_upload(sid, offset=len(first), length=len(data),
                                headers={"Upload-Checksum": checksum_header(data)})
            for sid in sids]
    try:
        for req, sid in zip(reqs, sids, strict=True):
            req.send(data[:3 * CHUNK])
            wait_for(lambda sid=sid: len(chunk_files(cluster, sid)) >= 3, timeout=20,
                     what="chunks to be staged")
        cluster.kill("processor")
    finally:
        for req in reqs:
            req.close()
    restarted, finalized = sids
    assert len(chunk_files(cluster, restarted)) >= 3, "the crash left staged chunks"

    cluster.start("processor")
    cluster.wait_ready("api")
    # the restarted processor takes its killed predecessor's writer leases over at once
    done = finalize(api, finalized)
    assert done["chunk_count"] == 1
    assert chunk_files(cluster, finalized) == committed_names(1)

    cluster.restart("storage")
    cluster.wait_ready("api")
    assert chunk_files(cluster, restarted) == committed_names(1)
    assert head_offset(api, restarted) == len(first)
    assert patch(api, restarted, len(first), data).status_code == 200
    finalize(api, restarted)
    assert chunk_files(cluster, restarted) == committed_names(5)
    assert replay(api, restarted).content == first + data
    assert replay(api, finalized).content == first
