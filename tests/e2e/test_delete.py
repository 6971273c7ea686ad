"""DELETE crypto-erases a session: key first, then chunk files; idempotent."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    MIB,
    assert_error,
    create_session,
    patch,
    recorded_session,
    replay,
    session_bytes,
    wait_for,
    wait_writer_held,
)

pytestmark = pytest.mark.e2e


def _assert_erased(cluster: Cluster, api: httpx.Client, sid: str) -> None:
    shown = api.get(f"/sessions/{sid}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["state"] == "deleted"
    assert "wrapped_key" not in shown.json()
    with cluster.storage_internal() as storage:  # behind the API: the wrapped key is gone
        record = storage.get(f"/sessions/{sid}").json()
    assert record["state"] == "deleted" and record["wrapped_key"] is None
    assert not list(cluster.session_dir(sid).glob("*.lcs")), "chunk files left on disk"

    assert_error(replay(api, sid), 409, "invalid_state")
    assert_error(replay(api, sid, "bytes=0-0"), 409, "invalid_state")
    assert_error(patch(api, sid, 0, b"x"), 409, "invalid_state")
    assert_error(api.post(f"/sessions/{sid}/finalize"), 409, "invalid_state")
    assert_error(api.post(f"/sessions/{sid}/verify"), 409, "invalid_state")
    assert_error(api.get(f"/sessions/{sid}/checkpoint"), 409, "invalid_state")
    r = api.get(f"/sessions/{sid}/chunks/0")
    assert r.status_code in (404, 409), r.status_code
    assert_error(r, r.status_code, ("chunk_not_found", "invalid_state"))


def test_delete_completed_session(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(3 * MIB + 10, seed=100)
    sid = recorded_session(api, data, piece=len(data))["id"]
    files = sorted(cluster.session_dir(sid).glob("*.lcs"))
    assert [p.name for p in files] == [f"{i:010d}.lcs" for i in range(4)]

    r = api.delete(f"/sessions/{sid}")
    assert r.status_code == 204 and r.content == b""
    _assert_erased(cluster, api, sid)

    again = api.delete(f"/sessions/{sid}")  # idempotent
    assert again.status_code == 204
    assert api.get(f"/sessions/{sid}").json()["state"] == "deleted"


def test_delete_recording_session(cluster: Cluster, api: httpx.Client) -> None:
    sid = create_session(api, {"user": "to-delete"})["id"]
    assert patch(api, sid, 0, session_bytes(MIB + 5, seed=101)).status_code == 200
    assert api.delete(f"/sessions/{sid}").status_code == 204
    _assert_erased(cluster, api, sid)


def test_deleted_sessions_are_listed_as_deleted(api: httpx.Client) -> None:
    sid = create_session(api, {"case": "listed-deleted"})["id"]
    assert api.delete(f"/sessions/{sid}").status_code == 204
    page = api.get("/sessions", params={"state": "deleted", "label": "case:listed-deleted"}).json()
    assert [s["id"] for s in page["items"]] == [sid]


def test_delete_during_an_upload(cluster: Cluster, api: httpx.Client) -> None:
    """An admin deletes a session that is still being recorded: nothing survives on disk."""
    data = session_bytes(4 * MIB, seed=102)
    sid = create_session(api)["id"]
    req = cluster.open_upload(sid, length=len(data), timeout=15)
    try:
        req.send(data[:MIB + MIB // 2])
        wait_writer_held(api, sid)
        assert api.delete(f"/sessions/{sid}").status_code == 204
        try:
            req.send(data[req.sent:])
            answer = req.response()
        except ConnectionError:
            answer = None  # cut: fine
    finally:
        req.close()
    if answer is not None:
        assert_error(answer, 409, "invalid_state")
    wait_writer_free_or_deleted(api, sid)
    _assert_erased(cluster, api, sid)


def wait_writer_free_or_deleted(api: httpx.Client, sid: str) -> None:
    """Wait until the aborted upload has finished in the processor (PATCH no longer busy)."""
    def settled() -> bool:
        r = patch(api, sid, 0, b"")
        return not (r.status_code == 409 and r.json()["error"] == "upload_in_progress")

    wait_for(settled, timeout=15, what="the aborted upload to finish")
