"""Two processors in front of one storage (one SQLite file): the writer lease holds across them.

Processor A is paused with SIGSTOP mid-upload, past its writer lease.  Processor B
resumes the session where storage says it stands (its Merkle state rebuilt from
storage's leaves: B never saw the session), A is continued with SIGCONT and every
write it still tries carries its old fencing token, so storage refuses it with 409
`lease_lost`; A's client gets that 409 and nothing of A's late bytes is acknowledged
or visible.  The session then finalizes, replays byte for byte and verifies.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessions.client import launcher
from sessions.client.launcher import Node
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    UPLOAD_TYPE,
    RawRequest,
    finalize,
    head_offset,
    replay,
    session_bytes,
    upload,
)

LEASE_SECONDS = 3


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Node]]:
    """Storage and processor A (a Cluster), and processor B on the same data dir and storage."""
    root = tmp_path_factory.mktemp("two-processors")
    a = Cluster(root)
    a.base_env["LUCID_LEASE_SECONDS"] = str(LEASE_SECONDS)
    (root / "logs-b").mkdir()
    b = Node(a.data_dir, {**a.ports, "processor": launcher.free_port()}, root / "logs-b",
             base_env=dict(a.base_env))
    try:
        a.start("storage")
        a.start("processor")  # first: it makes the node's keys, which B then reads
        b.start("processor")
        yield a, b
    finally:
        for proc in (a.procs.get("processor"), b.procs.get("processor")):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        b.stop()
        a.stop()


def _client(node: Node, token: str) -> httpx.Client:
    return httpx.Client(base_url=node.url("processor") + "/internal/v1",
                        headers={"Authorization": f"Bearer {token}"}, trust_env=False,
                        timeout=httpx.Timeout(60.0, connect=5.0))


def test_a_processor_paused_past_its_lease_is_fenced_off(pair: tuple[Cluster, Node]) -> None:
    a, b = pair
    token = a.secret("service.token")
    data = session_bytes(6 * CHUNK + 12345, seed=71)
    with _client(a, token) as via_a, _client(b, token) as via_b:
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

    for log in (Path(a.log_path("processor")), b.log_dir / "processor.log"):  # type: ignore[operator]
        assert "Traceback" not in log.read_text(encoding="utf-8"), log
