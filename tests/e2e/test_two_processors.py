"""Two processors in front of one storage: the writer lease holds across them.

Processor A is paused with SIGSTOP mid-upload, past its writer lease (storage on SQLite
and on MongoDB).  Processor B
resumes the session where storage says it stands (its Merkle state rebuilt from
storage's leaves: B never saw the session), A is continued with SIGCONT and every
write it still tries carries its old fencing token, so storage refuses it with 409
`lease_lost`; A's client gets that 409 and nothing of A's late bytes is acknowledged
or visible.  The session then finalizes, replays byte for byte and verifies.

Two gateways, each in front of its own processor (one storage, on SQLite and on
MongoDB): processor A is killed with SIGKILL mid-upload through gateway A; through
gateway B processor B is refused while A's lease runs, then takes the session over
once it lapses, finishes and finalizes it; it replays byte for byte through both
gateways (processor A restarted) and verifies.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import pytest

from sessions.client.launcher import Node
from tests.e2e._nodes import beside, gateway, processor, tracebacks
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    UPLOAD_TYPE,
    RawRequest,
    RawResponse,
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

LEASE_SECONDS = 3


def _on_store(cluster: Cluster, store: str, request: pytest.FixtureRequest) -> None:
    """Put the cluster's storage on `store`: SQLite (its default) or the MongoDB test server."""
    if store == "mongodb":
        cluster.extra_env["storage"] = {
            "LUCID_METADATA_URL": request.getfixturevalue("mongo_server").url()}


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def pair(tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Node]]:
    """Storage and processor A (a Cluster), and processor B on the same data dir and storage."""
    root = tmp_path_factory.mktemp(f"two-processors-{request.param}")
    a = Cluster(root)
    a.base_env["LUCID_LEASE_SECONDS"] = str(LEASE_SECONDS)
    _on_store(a, request.param, request)
    try:
        a.start("storage")
        a.start("processor")  # first: it makes the node's keys, which B then reads
        with beside(a, root / "b", ["processor"]) as b:
            try:
                yield a, b
            finally:
                for proc in (a.procs.get("processor"), b.procs.get("processor")):
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
    finally:
        a.stop()


def test_a_processor_paused_past_its_lease_is_fenced_off(pair: tuple[Cluster, Node]) -> None:
    a, b = pair
    token = a.secret("service.token")
    data = session_bytes(6 * CHUNK + 12345, seed=71)
    with processor(a, token) as via_a, processor(b, token) as via_b:
        r = via_a.post("/sessions", json={"labels": {"case": "lease"}})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        upload(via_a, sid, data[:2 * CHUNK])  # A writes and releases its lease

        # A takes the lease again for a request whose body stops after 1.5 chunks
        late = RawRequest(a.ports["processor"], "PATCH", f"/internal/v1/sessions/{sid}/upload",
                          {"Authorization": f"Bearer {token}", "Content-Type": UPLOAD_TYPE,
                           "Upload-Offset": str(2 * CHUNK),
                           "Content-Length": str(3 * CHUNK)}, timeout=60.0)
        late.send(data[2 * CHUNK:2 * CHUNK + CHUNK * 3 // 2])
        deadline = time.monotonic() + 30
        while head_offset(via_b, sid) < 3 * CHUNK:  # A sealed and committed one more chunk
            assert time.monotonic() < deadline, "processor A committed nothing of the body"
            time.sleep(0.05)
        busy = via_b.patch(f"/sessions/{sid}/upload", content=data[3 * CHUNK:4 * CHUNK],
                           headers={"Upload-Offset": str(3 * CHUNK),
                                    "Content-Type": UPLOAD_TYPE})
        assert busy.status_code == 409 and busy.json()["error"] == "upload_in_progress", busy.text

        a.procs["processor"].send_signal(signal.SIGSTOP)
        try:
            time.sleep(LEASE_SECONDS * 1.5)  # A's lease lapses; it cannot renew it
            offset = head_offset(via_b, sid)
            assert offset == 3 * CHUNK
            upload(via_b, sid, data, start=offset)  # B takes the session over and finishes it
        finally:
            a.procs["processor"].send_signal(signal.SIGCONT)

        # A wakes up and writes on with its stale token: refused, nothing acknowledged
        late.send(data[2 * CHUNK + CHUNK * 3 // 2:5 * CHUNK])
        answer = late.response()
        assert answer.status_code == 409, answer.text[:300]
        assert answer.json()["error"] == "lease_lost", answer.text[:300]
        assert head_offset(via_b, sid) == len(data)

        done = finalize(via_b, sid)
        assert done["chunk_count"] == 7
        got = replay(via_a, sid)  # either processor reads it back, byte for byte
        assert got.status_code == 200 and got.content == data
        report = via_a.post(f"/sessions/{sid}/verify")
        assert report.status_code == 200 and report.json()["ok"] is True, report.text

    problems = a.log_problems() + tracebacks(b, "processor B")
    assert not problems, "\n\n".join(problems)


# -- two gateways, two processors: a processor killed mid-upload, resumed through the other -----

FRONTED_LEASE_SECONDS = 6  # long enough that B's probe right after the kill meets A's lease


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def fronted(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Node]]:
    """Storage, processor A and gateway A (a Cluster), and gateway B in front of processor B
    (a node on the same data dir and storage: the gateway's LUCID_PROCESSOR_URL is its own
    node's processor)."""
    root = tmp_path_factory.mktemp(f"two-gateways-{request.param}")
    a = Cluster(root)
    a.base_env["LUCID_LEASE_SECONDS"] = str(FRONTED_LEASE_SECONDS)
    _on_store(a, request.param, request)
    try:
        a.start_all()
        with beside(a, root / "b", ["processor", "api"]) as b:
            yield a, b
    finally:
        a.stop()


def _answer(req: RawRequest) -> RawResponse | None:
    try:
        return req.response()
    except (ConnectionError, TimeoutError):
        return None


def test_a_processor_killed_mid_upload_is_taken_over_through_the_other_gateway(
        fronted: tuple[Cluster, Node]) -> None:
    a, b = fronted
    assert b.env_of("api")["LUCID_PROCESSOR_URL"] == b.url("processor") != a.url("processor")
    data = session_bytes(6 * CHUNK + 4321, seed=72)
    with a.client() as via_a, gateway(b, a.admin_token) as via_b:
        sid = create_session(via_a, {"case": "takeover"})["id"]
        upload(via_a, sid, data[:2 * CHUNK])
        acked = 2 * CHUNK  # acknowledged through gateway A

        late = a.open_upload(sid, length=len(data) - acked, offset=acked, timeout=30)
        late.send(data[acked:acked + CHUNK * 3 // 2])
        wait_for(lambda: head_offset(via_b, sid) >= acked + CHUNK, timeout=30,
                 what="processor A to commit a chunk of the open request")
        a.kill("processor")  # SIGKILL, holding the session's writer lease
        # B is another holder: A's unexpired lease refuses it (nothing changes) ...
        offset = head_offset(via_b, sid)
        assert offset == acked + CHUNK
        assert_error(patch(via_b, sid, offset, b""), 409, "upload_in_progress")
        # ... until the lease lapses; then B takes the session over from storage's state
        assert committed_prefix_ok(via_b, sid, data, offset)
        seen = resume(via_b, sid, data, timeout=FRONTED_LEASE_SECONDS * 6)
        assert seen[0] == offset and seen[-1] == len(data), seen
        done = finalize(via_b, sid)
        assert done["offset"] == len(data) and done["chunk_count"] == 7
        got = replay(via_b, sid)
        assert got.status_code == 200 and got.content == data
        report = via_b.post(f"/sessions/{sid}/verify")
        assert report.status_code == 200 and report.json()["ok"] is True, report.text

        # A's client sends the rest of its body: gateway A, its processor gone, refuses it
        with contextlib.suppress(OSError):
            late.send(data[acked + CHUNK * 3 // 2:])
        cut = _answer(late)
        assert cut is None or cut.status_code >= 500, cut  # never acknowledged

        a.start("processor")  # the restarted A reads what B wrote, byte for byte
        a.wait_ready("api")
        again = replay(via_a, sid)
        assert again.status_code == 200 and again.content == data
        assert via_a.get(f"/sessions/{sid}").json()["root_hash"] == done["root_hash"]

    problems = a.log_problems() + tracebacks(b, "node B")
    assert not problems, "\n\n".join(problems)
