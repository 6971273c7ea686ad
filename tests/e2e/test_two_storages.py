"""Two of each service in front of one MongoDB (SecantusDB) and one S3 prefix (SeaweedFS).

Side A (gateway A -> processor A -> storage A) and side B (gateway B -> processor B ->
storage B) are separate processes on loopback ports; the two storage processes share
the metadata database and the bucket prefix, and nothing else.  Several sessions are
uploaded at once, spread over both sides, one of them half through each side.
Processor A is killed with SIGKILL in the middle of an upload through gateway A; the
session is resumed through gateway B once A's writer lease lapses.  Every session
finalizes, replays byte for byte through both gateways and verifies (root and
signature), and the S3 prefix holds every committed chunk under the leaf hash its
commit names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sessions.client.launcher import SERVICES, Node
from tests.e2e._nodes import beside, gateway, tracebacks
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    assert_error,
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
)
from tests.storage.s3_server import S3Server, s3_server  # noqa: F401 - a fixture
from tests.storage.test_chunkstore_contract import s3_store

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

LEASE_SECONDS = 4
SESSIONS = 4  # uploaded at once: even ones through A, odd ones through B


@pytest.fixture
def sides(tmp_path: Path, s3_server: S3Server,  # noqa: F811
          request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Node, str]]:
    """Side A (a Cluster) and side B (a Node on the same secrets, other ports); both
    storages on one MongoDB database and one S3 prefix, which is returned too."""
    mongo_url = request.getfixturevalue("mongo_server").url()
    key, secret = s3_server.write_credentials(tmp_path / "s3-secrets")
    prefix_url = s3_server.url()
    shared = {"LUCID_METADATA_URL": mongo_url, "LUCID_CHUNK_STORE_URL": prefix_url,
              "LUCID_S3_ENDPOINT": s3_server.endpoint, "LUCID_S3_ACCESS_KEY_FILE": str(key),
              "LUCID_S3_SECRET_KEY_FILE": str(secret)}
    (tmp_path / "a").mkdir()
    a = Cluster(tmp_path / "a")
    a.base_env["LUCID_LEASE_SECONDS"] = str(LEASE_SECONDS)
    a.extra_env["storage"] = dict(shared)
    try:
        a.start_all()
        with beside(a, tmp_path / "b", SERVICES) as b:  # its storage: the same `shared`
            yield a, b, prefix_url
    finally:
        a.stop()


def _record(node: Node, admin: str, sid: str, data: bytes, split: Node | None) -> None:
    """Upload data through node's gateway (the second half through split's, if given)."""
    half = len(data) // 2 if split is not None else len(data)
    with gateway(node, admin) as api:
        upload(api, sid, data[:half])
    if split is not None:
        with gateway(split, admin) as other:
            upload(other, sid, data, start=half)


def test_two_gateways_processors_and_storages_share_one_database_and_bucket(
        sides: tuple[Cluster, Node, str], s3_server: S3Server) -> None:  # noqa: F811
    a, b, prefix_url = sides
    admin = a.admin_token
    assert b.env_of("processor")["LUCID_STORAGE_URL"] == b.url("storage") != a.url("storage")
    assert b.env_of("api")["LUCID_PROCESSOR_URL"] == b.url("processor")
    datas = {}
    with a.client() as via_a, gateway(b, admin) as via_b:
        # -- several sessions at once, spread over both sides ------------------------------
        sids = []
        for i in range(SESSIONS):
            api = via_a if i % 2 == 0 else via_b
            sids.append(create_session(api, {"case": "two-storages", "n": str(i)})["id"])
            datas[sids[-1]] = session_bytes(3 * CHUNK + 1000 * i + 7, seed=300 + i)
        with ThreadPoolExecutor(SESSIONS) as pool:
            jobs = [pool.submit(_record, a if i % 2 == 0 else b, admin, sid, datas[sid],
                                b if i == 0 else None)  # session 0: half through each side
                    for i, sid in enumerate(sids)]
            for job in jobs:
                job.result()

        # -- processor A killed mid-upload through gateway A, resumed through gateway B ------
        sid = create_session(via_a, {"case": "killed"})["id"]
        data = datas[sid] = session_bytes(5 * CHUNK + 4321, seed=399)
        upload(via_a, sid, data[:CHUNK])
        late = a.open_upload(sid, length=len(data) - CHUNK, offset=CHUNK, timeout=30)
        late.send(data[CHUNK:CHUNK + CHUNK * 3 // 2])
        wait_for(lambda: head_offset(via_b, sid) >= 2 * CHUNK, timeout=30,
                 what="processor A to commit a chunk of the open request")
        a.kill("processor")  # SIGKILL, holding the session's writer lease
        offset = head_offset(via_b, sid)
        assert offset == 2 * CHUNK
        assert_error(patch(via_b, sid, offset, b""), 409, "upload_in_progress")
        assert committed_prefix_ok(via_b, sid, data, offset)
        seen = resume(via_b, sid, data, timeout=LEASE_SECONDS * 6)
        assert seen[0] == offset and seen[-1] == len(data), seen
        with contextlib.suppress(OSError):
            late.close()
        a.start("processor")
        a.wait_ready("api")

        # -- every session finalizes, replays byte for byte through both sides, verifies ----
        for n, (sid, data) in enumerate(datas.items()):
            done = finalize(via_a if n % 2 else via_b, sid)
            assert done["offset"] == len(data), done
            for api in (via_a, via_b):
                got = replay(api, sid)
                assert got.status_code == 200 and got.content == data, (sid, got.status_code)
                report = api.post(f"/sessions/{sid}/verify")
                assert report.status_code == 200, report.text
                assert report.json()["ok"] is True, report.text
            assert via_a.get(f"/sessions/{sid}").json()["root_hash"] == done["root_hash"]

    # -- the prefix holds each committed chunk under the leaf hash its commit names ---------
    store = s3_store(s3_server, prefix_url)
    with a.storage_internal() as storage:
        for sid in datas:
            rows = storage.get(f"/sessions/{sid}/chunks").json()["items"]
            named = {(r["index"], r["leaf_hash"]) for r in rows}
            stored = asyncio.run(store.stored(sid))
            assert named <= {(c.index, (c.leaf_hash or b"").hex()) for c in stored}
    for node in (a, b):  # each storage ran its start-up sweep of the shared prefix
        metrics = httpx.get(node.url("storage") + "/metrics", trust_env=False, timeout=10,
                            headers=a.auth_of("storage")).text
        assert "lucid_orphan_sweep_last_pass_timestamp_seconds " in metrics
        assert "lucid_orphan_sweep_last_pass_timestamp_seconds 0.0" not in metrics

    problems = a.log_problems() + tracebacks(b, "side B")
    assert not problems, "\n\n".join(problems)
