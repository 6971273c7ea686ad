"""A processor on another host takes over a session with a retention period.

A session with a retention has its data key wrapped under its retention period's key
(`LUCID_KEK_DIR/YYYY-MM.key`, a file, never in the database), so every processor that
may take such a session over needs the same period keys: a shared LUCID_KEK_DIR (one
volume mounted by the processors of a deployment, README "Pointing a Pi deployment at
external S3 and a MongoDB replica set").  Processor B here has its own data dir (as on
another host) and is given the node's secrets by file, like a second host.

- With the KEK directory shared, B finishes, finalizes, replays and verifies the session
  processor A began, and a period key made by B is one A uses too.
- Without it, B refuses the session with 409 `key_unavailable` (never a 500, never
  bytes), and A, which holds the period key, still serves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.client.launcher import Node
from tests.e2e._nodes import beside, processor, tracebacks
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    assert_error,
    create_session,
    finalize,
    head_offset,
    patch,
    replay,
    session_bytes,
    upload,
)


@pytest.fixture(params=["shared", "separate"])
def two_hosts(tmp_path: Path,
              request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Node, bool]]:
    """Storage, processor A and gateway A; processor B on its own data dir, with the node's
    secrets by file and, when shared, A's KEK directory."""
    shared: bool = request.param == "shared"
    (tmp_path / "a").mkdir()
    a = Cluster(tmp_path / "a")
    if shared:
        a.base_env["LUCID_KEK_DIR"] = str(tmp_path / "kek")  # one volume for both processors
    try:
        a.start_all()
        secrets = a.data_dir / "secrets"
        with beside(a, tmp_path / "b", ["processor"], own_data=True, env={
                "LUCID_MASTER_KEY_FILE": str(secrets / "master.key"),
                "LUCID_SIGNING_KEY_FILE": str(secrets / "signing.key"),
                "LUCID_SERVICE_TOKEN_FILE": str(secrets / "service.token")}) as b:
            yield a, b, shared
    finally:
        a.stop()


def test_a_retention_session_moves_to_another_processor_only_with_its_period_keys(
        two_hosts: tuple[Cluster, Node, bool]) -> None:
    a, b, shared = two_hosts
    assert b.data_dir != a.data_dir  # storage's socket is named by the data dir of its node
    assert b.env_of("processor")["LUCID_STORAGE_UDS"] == str(a.sockets["storage"])
    data = session_bytes(3 * CHUNK + 777, seed=91)
    token = a.secret("service.token")
    with a.client() as api, processor(b, token) as via_b, processor(a, token) as via_a:
        sid = create_session(api, {"case": "kek"}, retention_days=30)["id"]
        upload(api, sid, data[:CHUNK + 100])  # processor A wraps and uses the session's key
        assert via_b.get(f"/sessions/{sid}").json()["expires_at"] is not None
        periods = list((Path(a.env_of("processor").get("LUCID_KEK_DIR")
                             or a.data_dir / "secrets" / "kek")).glob("*.key"))
        assert len(periods) == 1, periods  # the session's key is under a period key

        offset = head_offset(via_b, sid)
        assert offset == CHUNK + 100  # all of it was acknowledged
        if not shared:
            assert_error(patch(via_b, sid, offset, data[offset:]), 409, "key_unavailable")
            assert_error(replay(via_b, sid), 409, "key_unavailable")
            assert head_offset(via_a, sid) == offset  # nothing was acknowledged through B
            upload(via_a, sid, data, start=offset)  # A, which holds the period key, goes on
            finalize(via_a, sid)
            got = replay(via_a, sid)
            assert got.status_code == 200 and got.content == data
            assert_error(replay(via_b, sid), 409, "key_unavailable")
        else:
            upload(via_b, sid, data, start=offset)  # B takes the session over and finishes it
            done = finalize(via_b, sid)
            assert done["offset"] == len(data)
            for via in (via_a, via_b):
                got = replay(via, sid)
                assert got.status_code == 200 and got.content == data
                report = via.post(f"/sessions/{sid}/verify")
                assert report.status_code == 200 and report.json()["ok"] is True, report.text
            # a period key B makes (a session expiring in another month) serves A too
            other = create_session(api, {"case": "kek-b"}, retention_days=400)["id"]
            upload(via_b, other, data[:CHUNK // 2])
            got = replay(via_a, other)
            assert got.status_code == 200 and got.content == data[:CHUNK // 2]

    problems = a.log_problems() + tracebacks(b, "processor B")
    assert not problems, "\n\n".join(problems)
