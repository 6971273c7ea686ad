"""Retention, legal hold and limits against real processes (README "Retention, legal hold and
limits").

A cluster of its own (short sweep interval, idle deadline and body-read timeout):
- a sweeper killed with SIGKILL mid-pass leaves every session either wholly erased or
  wholly intact, and finishes on restart;
- a recorder process killed mid-session: the sweep finalizes its session over the
  committed chunks once the idle deadline has passed;
- a client that opens a PATCH and sends nothing gets 408 and frees the writer slot;
- a storage free-space watermark above the free space: 507 `insufficient_storage` through
  the gateway, nothing staged, nothing acknowledged lost (on the suite's shared cluster);
- legal hold through the gateway: DELETE is 409 `legal_hold` until released.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest

from sessions.client.launcher import REPO
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    assert_error,
    create_session,
    head_offset,
    patch,
    replay,
    session_bytes,
    upload,
    wait_for,
)

IDLE_DEADLINE = 8


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("e2e-lifecycle"))
    c.extra_env["*"] = {"LUCID_SWEEP_INTERVAL": "0.2", "LUCID_SWEEP_BATCH": "3",
                        "LUCID_IDLE_DEADLINE": str(IDLE_DEADLINE),
                        "LUCID_BODY_READ_TIMEOUT": "1"}
    with c.serving():
        yield c


@pytest.fixture
def lapi(lc: Cluster) -> Iterator[httpx.Client]:
    with lc.client() as client:
        yield client


def _states(lc: Cluster, ids: list[str]) -> dict[str, tuple[str, bool]]:
    """Return {id: (state, has a wrapped key)} as storage's metadata file holds them."""
    marks = ",".join("?" * len(ids))
    with sqlite3.connect(lc.data_dir / "storage" / "metadata.sqlite3", timeout=10) as db:
        rows = db.execute(f"SELECT id, state, key_blob IS NOT NULL FROM sessions "  # noqa: S608
                          f"WHERE id IN ({marks})", ids).fetchall()
    return {r[0]: (r[1], bool(r[2])) for r in rows}


def test_a_sweeper_killed_mid_pass_leaves_nothing_half_deleted_and_finishes(
        lc: Cluster, lapi: httpx.Client) -> None:
    data = session_bytes(3000, seed=14)
    ids = []
    for _ in range(24):
        sid = create_session(lapi, retention_days=30)["id"]
        upload(lapi, sid, data)
        ids.append(sid)
    lc.kill("processor")  # no sweep while their expiry is moved into the past
    with sqlite3.connect(lc.data_dir / "storage" / "metadata.sqlite3", timeout=10) as db:
        db.execute(f"UPDATE sessions SET expires_at = '2026-01-01T00:00:00.000000Z' "  # noqa: S608
                   f"WHERE id IN ({','.join('?' * len(ids))})", ids)
    lc.start("processor")

    def some_erased() -> bool:
        deleted = sum(state == "deleted" for state, _ in _states(lc, ids).values())
        assert deleted < len(ids), "the sweep finished before it could be killed"
        return deleted >= 2

    wait_for(some_erased, timeout=30, what="the sweep to erase a few sessions", interval=0.01)
    lc.kill("processor")  # SIGKILL mid-pass (3 per pass, a pass every 0.2 s)
    states = _states(lc, ids)
    erased = [sid for sid, (state, _) in states.items() if state == "deleted"]
    assert 2 <= len(erased) < len(ids)
    for sid, (state, has_key) in states.items():  # wholly erased or wholly intact
        if state == "deleted":
            assert not has_key, sid
        else:
            assert (state, has_key) == ("recording", True), sid
            assert lc.chunk_file(sid, 0).exists(), sid

    lc.start("processor")
    lc.wait_ready("api")
    wait_for(lambda: all(s == "deleted" for s, _ in _states(lc, ids).values())
             and not any(lc.session_dir(sid).exists() for sid in ids), timeout=60,
             what="the restarted sweep to erase the rest, files and all")
    assert not any(k for _, k in _states(lc, ids).values())
    assert lapi.get(f"/sessions/{ids[-1]}").json()["state"] == "deleted"


RECORDER = textwrap.dedent("""
    import sys, time, httpx
    from tests.e2e.support import session_bytes
    base, token, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = session_bytes(40 * chunk, seed=11)
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer " + token},
                      trust_env=False, timeout=60) as api:
        sid = api.post("/sessions", json={"labels": {"host": "ws-17"}}).json()["id"]
        print(sid, flush=True)
        offset = 0
        while True:
            r = api.patch(f"/sessions/{sid}/upload", content=data[offset:offset + chunk],
                          headers={"Upload-Offset": str(offset),
                                   "Content-Type": "application/offset+octet-stream"})
            offset = r.json()["offset"]
            print(offset, flush=True)
            time.sleep(0.2)
""")


def test_a_recorder_killed_mid_session_is_finalized_after_the_idle_deadline(
        lc: Cluster, lapi: httpx.Client) -> None:
    recorder = subprocess.Popen(  # noqa: S603 - our own interpreter and test code
        [sys.executable, "-c", RECORDER, lc.url("api") + "/v1", lc.admin_token, str(CHUNK)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert recorder.stdout is not None
        sid = recorder.stdout.readline().strip()
        acknowledged = 0
        while acknowledged < 3 * CHUNK:
            acknowledged = int(recorder.stdout.readline())
    finally:
        recorder.kill()  # SIGKILL, maybe mid-PATCH
        recorder.wait(timeout=10)
    assert lapi.get(f"/sessions/{sid}").json()["state"] == "recording"

    done = wait_for(lambda: (s := lapi.get(f"/sessions/{sid}").json())["state"] == "completed"
                    and s, timeout=IDLE_DEADLINE + 45, what="the sweep to close the session")
    assert done["offset"] >= acknowledged  # nothing acknowledged is lost
    assert done["offset"] % CHUNK == 0 and done["integrity"] == "ok"
    data = session_bytes(40 * CHUNK, seed=11)
    assert replay(lapi, sid).content == data[:done["offset"]]
    report = lapi.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] and report["signature_ok"], report
    assert lapi.get(f"/sessions/{sid}/manifest").status_code == 200


def test_a_stalled_patch_gets_408_and_frees_the_writer_slot(lc: Cluster,
                                                             lapi: httpx.Client) -> None:
    data = session_bytes(3 * CHUNK, seed=12)
    sid = create_session(lapi)["id"]
    upload(lapi, sid, data[:CHUNK])
    silent = lc.open_upload(sid, length=CHUNK, offset=CHUNK)  # headers only, then nothing
    answer = silent.response()
    assert_error(answer, 408, "request_timeout")
    partial = lc.open_upload(sid, length=CHUNK, offset=CHUNK)
    partial.send(data[CHUNK:CHUNK + 1000])  # a few bytes, then silence
    assert_error(partial.response(), 408, "request_timeout")
    assert head_offset(lapi, sid) == CHUNK  # committed data stays, nothing half-committed
    # The slot is free again once the processor has seen the gateway abort the relay: that
    # happens after the 408 left the gateway, so a PATCH at once may still meet it busy (409
    # upload_in_progress, which clients retry). It must free within seconds, not stay held.
    def resumed() -> httpx.Response | None:
        r = patch(lapi, sid, CHUNK, data[CHUNK:])
        busy = r.status_code == 409 and r.json().get("error") == "upload_in_progress"
        return None if busy else r

    r = wait_for(resumed, timeout=10, what="the stalled upload's writer slot to be freed")
    assert r.status_code == 200 and r.json()["offset"] == 3 * CHUNK
    assert replay(lapi, sid).content == data


def test_the_free_disk_watermark_refuses_with_507_and_loses_nothing(
        restartable: Cluster, api: httpx.Client) -> None:
    """On the suite's shared cluster (no idle deadline: restarts take their time)."""
    c = restartable
    data = session_bytes(3 * CHUNK, seed=13)
    sid = create_session(api)["id"]
    upload(api, sid, data[:CHUNK])
    before = dict(c.extra_env.get("storage", {}))
    c.extra_env["storage"] = before | {"LUCID_MIN_FREE_BYTES": str(1 << 62)}  # above any disk
    try:
        c.restart("storage")
        c.wait_ready("api")
        r = patch(api, sid, CHUNK, data[CHUNK:])
        body = assert_error(r, 507, "insufficient_storage")
        assert body["min_free_bytes"] == 1 << 62
        assert head_offset(api, sid) == CHUNK
        assert sorted(p.name for p in c.session_dir(sid).iterdir()) == ["0000000000.lcs"]
    finally:
        c.extra_env["storage"] = before
        c.restart("storage")
        c.wait_ready("api")
    r = patch(api, sid, CHUNK, data[CHUNK:])
    assert r.status_code == 200, r.text
    assert replay(api, sid).content == data


def test_legal_hold_blocks_delete_until_released(lc: Cluster, lapi: httpx.Client) -> None:
    sid = create_session(lapi, retention_days=7)["id"]
    upload(lapi, sid, b"keep me" * 100)
    r = lapi.put(f"/sessions/{sid}/hold")
    assert r.status_code == 200 and r.json()["legal_hold"] is True
    assert lapi.get(f"/sessions/{sid}").json()["legal_hold"] is True
    assert_error(lapi.delete(f"/sessions/{sid}"), 409, "legal_hold")
    assert replay(lapi, sid).content == b"keep me" * 100
    r = lapi.delete(f"/sessions/{sid}/hold")
    assert r.status_code == 200 and r.json()["legal_hold"] is False
    assert lapi.delete(f"/sessions/{sid}").status_code == 204
    assert_error(lapi.put(f"/sessions/{sid}/hold"), 409, "invalid_state")
    assert_error(lapi.put("/sessions/" + "0" * 26 + "/hold"), 404, "session_not_found")
    doc = lapi.get(lc.url("api") + "/openapi.json").json()
    hold = doc["paths"]["/v1/sessions/{session_id}/hold"]
    assert {"put", "delete"} <= set(hold) and "409" in hold["put"]["responses"]
    assert "409" in doc["paths"]["/v1/sessions/{session_id}"]["delete"]["responses"]
    assert "507" in doc["paths"]["/v1/sessions/{session_id}/upload"]["patch"]["responses"]
