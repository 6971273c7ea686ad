"""A processor killed with SIGKILL mid-upload and restarted resumes its sessions at once.

The killed processor held the session's writer lease for LUCID_LEASE_SECONDS (ten
minutes here); the restarted one, on the same data dir, claims its predecessor's
holder id (sessions/processor/lease.py) and takes the lease over with a new fencing
token instead of waiting for it to lapse.  The session then resumes, finalizes,
replays byte for byte and verifies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    committed_prefix_ok,
    create_session,
    finalize,
    head_offset,
    replay,
    resume,
    session_bytes,
    upload,
    wait_for,
)

LEASE_SECONDS = 600  # far longer than the test may take: no waiting the lease out


@pytest.fixture(scope="module")
def long_leases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("lease-restart"))
    c.base_env["LUCID_LEASE_SECONDS"] = str(LEASE_SECONDS)
    with c.serving():
        yield c


def test_a_restarted_processor_resumes_its_killed_predecessor_s_session_at_once(
        long_leases: Cluster) -> None:
    c = long_leases
    data = session_bytes(5 * CHUNK + 999, seed=73)
    with c.client() as api:
        sid = create_session(api, {"case": "restart"})["id"]
        upload(api, sid, data[:CHUNK])
        late = c.open_upload(sid, length=len(data) - CHUNK, offset=CHUNK)
        try:
            late.send(data[CHUNK:CHUNK * 5 // 2])
            wait_for(lambda: head_offset(api, sid) >= 2 * CHUNK, timeout=30,
                     what="the processor to commit a chunk of the open request")
            c.kill("processor")  # holding the session's ten-minute lease
        finally:
            late.abort()
        c.start("processor")
        c.wait_ready("api")
        offset = head_offset(api, sid)
        assert offset >= 2 * CHUNK and committed_prefix_ok(api, sid, data, offset)
        resume(api, sid, data, timeout=30)  # 409 upload_in_progress for ten minutes before
        done = finalize(api, sid)
        assert done["offset"] == len(data)
        assert replay(api, sid).content == data
        report = api.post(f"/sessions/{sid}/verify")
        assert report.status_code == 200 and report.json()["ok"] is True, report.text
