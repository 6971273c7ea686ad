"""SIGKILL a service mid-session (the processor, then storage); after a restart it carries on."""

from __future__ import annotations

import time

import httpx
import pytest

from sessions.core import Checkpoint, NoteVerifier, open_checkpoint, verify_consistency
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    MIB,
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
    wait_writer_held,
)

pytestmark = pytest.mark.e2e


def _checkpoint(api: httpx.Client, node: dict[str, str], sid: str) -> Checkpoint:
    r = api.get(f"/sessions/{sid}/checkpoint")
    assert r.status_code == 200, r.text
    return open_checkpoint(r.content, verifier=NoteVerifier.from_key_text(node["verifier_key"]),
                           origin=f"{node['key_name']}/sessions/{sid}")


def _consistent(api: httpx.Client, sid: str, old: Checkpoint, new: Checkpoint) -> None:
    r = api.get(f"/sessions/{sid}/proof/consistency", params={"from": old.size, "to": new.size})
    assert r.status_code == 200, r.text
    verify_consistency(old.root_hash, new.root_hash, old_size=old.size, new_size=new.size,
                       proof=[bytes.fromhex(h) for h in r.json()["proof"]])


def test_kill_between_requests(restartable: Cluster, api: httpx.Client,
                               node: dict[str, str]) -> None:
    cluster = restartable
    data = session_bytes(5 * MIB + 333, seed=60)
    sid = create_session(api, {"case": "kill-between"})["id"]
    upload(api, sid, data[:2 * MIB + MIB // 2], piece=2 * MIB + MIB // 2)
    before = _checkpoint(api, node, sid)
    assert before.size == 3

    cluster.kill("processor")
    # While it is down, the gateway answers with a clean 503, not a hang or a 500.
    assert_error(api.get(f"/sessions/{sid}/upload"), 503, "upstream_unavailable")
    assert_error(patch(api, sid, 2 * MIB + MIB // 2, b"x"), 503, "upstream_unavailable")
    r = httpx.get(cluster.url("api") + "/ready", trust_env=False)
    assert_error(r, 503, "not_ready")
    cluster.start("processor")
    cluster.wait_ready("api")

    offset = head_offset(api, sid)
    assert offset == 2 * MIB + MIB // 2
    upload(api, sid, data, start=offset, piece=2 * MIB)
    done = finalize(api, sid)
    assert done["offset"] == len(data)
    assert replay(api, sid).content == data
    after = _checkpoint(api, node, sid)
    assert after.root_hash.hex() == done["root_hash"]
    _consistent(api, sid, before, after)


def test_kill_during_an_upload(restartable: Cluster, api: httpx.Client,
                               node: dict[str, str]) -> None:
    cluster = restartable
    data = session_bytes(5 * MIB + 77, seed=61)
    sid = create_session(api, {"case": "kill-during"})["id"]
    req = cluster.open_upload(sid, length=len(data), timeout=20)
    try:
        req.send(data[:2 * MIB + MIB // 2])
        wait_writer_held(api, sid)
        time.sleep(0.5)  # let the bytes reach the processor (and, maybe, commits happen)
        before = _checkpoint(api, node, sid)  # a live checkpoint, taken mid-request

        cluster.kill("processor")
        # A live recorder keeps sending; its request must then end promptly with a 503
        # or a cut connection, not hang.
        req.sock.settimeout(10)
        answer = None
        try:
            req.send(data[req.sent:req.sent + MIB])
            answer = req.response()
        except TimeoutError:
            pytest.fail("the gateway neither answered nor closed after the processor died")
        except ConnectionError:
            pass  # cut: fine
        if answer is not None:
            assert_error(answer, 503, "upstream_unavailable")
    finally:
        req.close()
    cluster.start("processor")
    cluster.wait_ready("api")

    # Nothing is in flight any more: what is committed is final, and a prefix of the data.
    offset = head_offset(api, sid)
    assert before.size * CHUNK <= offset <= req.sent, (offset, req.sent)
    assert committed_prefix_ok(api, sid, data, offset)
    resume(api, sid, data)
    done = finalize(api, sid)
    assert done["offset"] == len(data)
    assert replay(api, sid).content == data
    after = _checkpoint(api, node, sid)
    _consistent(api, sid, before, after)
    report = api.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] is True, report


def test_kill_storage_between_requests(restartable: Cluster, api: httpx.Client,
                                       node: dict[str, str]) -> None:
    """Acknowledged means durable: after storage dies with SIGKILL, nothing committed is lost."""
    cluster = restartable
    data = session_bytes(4 * MIB + 99, seed=62)
    sid = create_session(api, {"case": "kill-storage"})["id"]
    upload(api, sid, data[:2 * MIB + 5], piece=2 * MIB + 5)
    before = _checkpoint(api, node, sid)

    cluster.kill("storage")
    assert_error(api.get(f"/sessions/{sid}"), 503, ("upstream_unavailable", "storage_unavailable"))
    cluster.start("storage")
    cluster.wait_ready("api")

    assert head_offset(api, sid) == 2 * MIB + 5
    upload(api, sid, data, start=2 * MIB + 5)
    finalize(api, sid)
    assert replay(api, sid).content == data
    _consistent(api, sid, before, _checkpoint(api, node, sid))
