"""The processor's writer lease: taken per upload, renewed while it runs, released after,
and a lost lease turned into a clean 409 with nothing more committed.

Storage, processor and gateway run in process (httpx ASGITransport); a second writer
is storage's lease API called directly, as another processor would.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app as api_app
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.lease import holder_identity
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app
from tests.e2e.support import session_bytes

pytestmark = pytest.mark.anyio
MIB = 1 << 20
UPLOAD = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Pause(httpx.AsyncBaseTransport):
    """The processor's transport to storage, which can freeze it as SIGSTOP would.

    Armed with a path suffix, it holds the first request to such a path and every later
    one (renewals included) until `resume` is set; unarmed, it only forwards.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.at: str | None = None
        self.held = asyncio.Event()
        self.resume = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.at is not None and request.url.path.endswith(self.at):
            self.held.set()
        if self.held.is_set():
            await self.resume.wait()
        return await self.inner.handle_async_request(request)


@dataclass
class Stack:
    api: httpx.AsyncClient
    storage: httpx.AsyncClient  # storage's internal API, as another processor calls it
    data_dir: Path
    pause: Pause  # the processor's transport to storage

    def lease(self, sid: str) -> tuple[int, str | None]:
        db = sqlite3.connect(self.data_dir / "storage" / "metadata.sqlite3")
        try:
            token, holder = db.execute("SELECT lease_token, lease_holder FROM sessions "
                                       "WHERE id = ?", (sid,)).fetchone()
        finally:
            db.close()
        return int(token), holder

    async def new(self) -> str:
        r = await self.api.post("/sessions", json={"labels": {"suite": "leases"}})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def committed(self, sid: str, at_least: int) -> None:
        """Return once the session's committed offset reaches at_least (polled)."""
        for _ in range(600):
            if await self.offset(sid) >= at_least:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"nothing committed up to {at_least}")

    async def offset(self, sid: str) -> int:
        return int((await self.api.head(f"/sessions/{sid}/upload")).headers["upload-offset"])


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    common: dict[str, Any] = {"data_dir": tmp_path}
    storage = storage_app(StorageSettings(**common))
    processor = processor_app(ProcessorSettings(**common, chunk_size=MIB, lease_seconds=1,
                                                storage_url="http://storage"),
                              storage_transport=(pause := Pause(httpx.ASGITransport(app=storage))))
    api = api_app(ApiSettings(**common, processor_url="http://processor"),
                  processor_transport=httpx.ASGITransport(app=processor))
    async with AsyncExitStack() as stack:
        for app in (storage, processor, api):
            await stack.enter_async_context(app.router.lifespan_context(app))
        admin = (tmp_path / "secrets" / "admin.token").read_text().strip()
        service = (tmp_path / "secrets" / "service.token").read_text().strip()
        client = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://api/v1",
            headers={"Authorization": f"Bearer {admin}"}, timeout=60))
        internal = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=storage), base_url="http://storage/internal/v1",
            headers={"Authorization": f"Bearer {service}"}, timeout=60))
        yield Stack(client, internal, tmp_path, pause)


async def test_an_upload_takes_and_releases_the_lease(stack: Stack) -> None:
    sid = await stack.new()
    data = session_bytes(2 * MIB + 7, seed=1)
    r = await stack.api.patch(f"/sessions/{sid}/upload", content=data,
                              headers={**UPLOAD, "Upload-Offset": "0"})
    assert r.status_code == 200, r.text
    assert stack.lease(sid) == (1, None)  # taken once, released at the end


async def test_another_writer_s_lease_refuses_the_upload(stack: Stack) -> None:
    sid = await stack.new()
    held = await stack.storage.post(f"/sessions/{sid}/lease",
                                    json={"holder": "other-proc", "ttl_seconds": 60})
    assert held.status_code == 200
    r = await stack.api.patch(f"/sessions/{sid}/upload", content=b"x" * 1000,
                              headers={**UPLOAD, "Upload-Offset": "0"})
    assert r.status_code == 409 and r.json()["error"] == "upload_in_progress", r.text
    assert await stack.offset(sid) == 0 and stack.lease(sid) == (1, "other-proc")


async def _stalling(first: bytes, rest: bytes, gate: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await gate.wait()
    yield rest


async def _stalled_upload(stack: Stack, sid: str, data: bytes,
                          gate: asyncio.Event) -> asyncio.Task[httpx.Response]:
    """Start one PATCH of `data` that stalls after its first chunk until `gate` is set;
    return its task once that first chunk is committed (the writer holds the lease)."""
    upload = asyncio.create_task(stack.api.patch(
        f"/sessions/{sid}/upload", content=_stalling(data[:MIB + 5], data[MIB + 5:], gate),
        headers={**UPLOAD, "Upload-Offset": "0", "Content-Length": str(len(data))}))
    await stack.committed(sid, MIB)
    return upload


async def test_renewals_keep_the_lease_past_its_seconds_while_a_body_stalls(
        stack: Stack) -> None:
    sid = await stack.new()
    data = session_bytes(2 * MIB + 3, seed=2)
    gate = asyncio.Event()
    upload = await _stalled_upload(stack, sid, data, gate)
    await asyncio.sleep(2.5)  # 2.5 lease lengths: only the renewals keep it
    other = await stack.storage.post(f"/sessions/{sid}/lease",
                                     json={"holder": "other-proc", "ttl_seconds": 60})
    assert other.status_code == 409 and other.json()["error"] == "upload_in_progress"
    gate.set()
    r = await upload
    assert r.status_code == 200 and r.json()["offset"] == len(data), r.text


async def test_a_lease_taken_over_mid_upload_is_a_clean_409(stack: Stack) -> None:
    sid = await stack.new()
    data = session_bytes(3 * MIB + 3, seed=3)
    gate = asyncio.Event()
    upload = await _stalled_upload(stack, sid, data, gate)
    # as if this processor had stalled past its lease: it lapses, another writer takes over
    db = sqlite3.connect(stack.data_dir / "storage" / "metadata.sqlite3")
    with db:
        db.execute("UPDATE sessions SET lease_expires = '2000-01-01T00:00:00.000000Z', "
                   "revision = revision + 1 WHERE id = ?", (sid,))
    db.close()
    other = await stack.storage.post(f"/sessions/{sid}/lease",
                                     json={"holder": "other-proc", "ttl_seconds": 60})
    assert other.status_code == 200, other.text
    gate.set()
    r = await upload
    assert r.status_code == 409 and r.json()["error"] == "lease_lost", r.text
    assert await stack.offset(sid) == MIB  # nothing after the takeover was committed
    assert stack.lease(sid) == (2, "other-proc")  # and the loser released nothing


# -- the declared length is a write too; an admin's changes cannot be undone by a writer ------


async def test_a_declared_length_is_written_under_the_lease(stack: Stack) -> None:
    """tus `Upload-Length` on a PATCH: the processor declares it under the writer lease, so
    while another processor holds the session it declares nothing (409, not a length)."""
    sid = await stack.new()
    held = await stack.storage.post(f"/sessions/{sid}/lease",
                                    json={"holder": "other-proc", "ttl_seconds": 60})
    tus = {**UPLOAD, "Upload-Offset": "0", "Upload-Length": "1000", "Tus-Resumable": "1.0.0"}
    r = await stack.api.patch(f"/sessions/{sid}/upload", content=b"", headers=tus)
    assert r.status_code == 409 and r.json()["error"] == "upload_in_progress", r.text
    assert (await stack.storage.get(f"/sessions/{sid}")).json()["upload_length"] is None
    await stack.storage.post(f"/sessions/{sid}/lease/release",
                             json={"holder": "other-proc", "token": held.json()["token"]})
    r = await stack.api.patch(f"/sessions/{sid}/upload", content=b"x" * 1000, headers=tus)
    assert r.status_code == 204, r.text
    row = (await stack.storage.get(f"/sessions/{sid}")).json()
    assert (row["upload_length"], row["offset"], row["state"]) == (1000, 1000, "completed")
    assert stack.lease(sid) == (4, None)  # declare, upload, finalize: each its own lease


async def test_a_length_declared_by_a_writer_paused_past_its_lease_is_refused(
        stack: Stack) -> None:
    """The processor is frozen with its declaring request in flight (and its renewals held)
    until its lease lapses and another writer takes the session over: the stale declaration
    is refused with 409 `lease_lost` and the session keeps no length."""
    sid = await stack.new()
    stack.pause.at = "/upload-length"
    tus = {**UPLOAD, "Upload-Offset": "0", "Upload-Length": "1000", "Tus-Resumable": "1.0.0"}
    patch = asyncio.create_task(stack.api.patch(f"/sessions/{sid}/upload", content=b"",
                                                headers=tus))
    await asyncio.wait_for(stack.pause.held.wait(), 30)
    await asyncio.sleep(1.5)  # past the one-second lease: nothing renews it
    other = await stack.storage.post(f"/sessions/{sid}/lease",
                                     json={"holder": "other-proc", "ttl_seconds": 60})
    assert other.status_code == 200 and other.json()["token"] == 2, other.text
    stack.pause.resume.set()
    r = await patch
    assert r.status_code == 409 and r.json()["error"] == "lease_lost", r.text
    assert (await stack.storage.get(f"/sessions/{sid}")).json()["upload_length"] is None
    assert stack.lease(sid) == (2, "other-proc")  # the stale writer released nothing


async def test_a_hold_set_mid_upload_survives_the_writer_s_later_commits(stack: Stack) -> None:
    """The hold (and the key rewrapped with it) changes the record under a writer: the
    writer's next commits are decided on a fresh read, so they keep both."""
    r = await stack.api.post("/sessions", json={"labels": {"suite": "leases"},
                                                 "retention_days": 7})
    sid = r.json()["id"]
    key_before = (await stack.storage.get(f"/sessions/{sid}")).json()["wrapped_key"]["key_id"]
    data = session_bytes(3 * MIB + 11, seed=5)
    gate = asyncio.Event()
    upload = await _stalled_upload(stack, sid, data, gate)
    held = await stack.api.put(f"/sessions/{sid}/hold")
    assert held.status_code == 200 and held.json()["legal_hold"] is True, held.text
    gate.set()
    r = await upload
    assert r.status_code == 200 and r.json()["offset"] == len(data), r.text
    row = (await stack.storage.get(f"/sessions/{sid}")).json()
    assert row["legal_hold"] is True and row["wrapped_key"]["key_id"] != key_before
    assert (await stack.api.post(f"/sessions/{sid}/finalize")).status_code == 200
    got = await stack.api.get(f"/sessions/{sid}/replay")
    assert got.status_code == 200 and got.content == data


async def test_an_operator_s_state_change_mid_upload_refuses_the_writer_s_next_commit(
        stack: Stack) -> None:
    """An unfenced change (no token: an operator marks the session failed) while a writer
    holds the lease: the writer's next write is refused by the state, nothing more lands."""
    sid = await stack.new()
    data = session_bytes(3 * MIB + 3, seed=6)
    gate = asyncio.Event()
    upload = await _stalled_upload(stack, sid, data, gate)
    assert stack.lease(sid)[1] is not None  # the writer holds the lease
    failed = await stack.storage.post(f"/sessions/{sid}/state", json={"to": "failed"})
    assert failed.status_code == 200, failed.text
    gate.set()
    r = await upload
    assert r.status_code == 409 and r.json()["error"] == "invalid_state", r.text
    row = (await stack.storage.get(f"/sessions/{sid}")).json()
    assert (row["state"], row["offset"], row["chunk_count"]) == ("failed", MIB, 1)
    assert stack.lease(sid) == (1, None)  # released after the refusal
    files = sorted(p.name for p in (stack.data_dir / "storage" / "chunks" / sid[:2] / sid
                                    ).iterdir())
    assert files == [f"{0:010d}.lcs"]  # the committed chunk; nothing staged stays behind


# -- the holder id: a restarted processor is its dead predecessor again --------------------------

_HOLD = ("import sys, time\n"
         "from pathlib import Path\n"
         "from sessions.processor.lease import holder_identity\n"
         "with holder_identity(Path(sys.argv[1]), 'child') as holder:\n"
         "    print(holder, flush=True)\n"
         "    time.sleep(120)\n")


def test_a_killed_holder_s_id_is_claimed_again_and_a_live_one_s_never(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)],  # noqa: S603
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        dead = child.stdout.readline().strip()
        assert dead.startswith("child.")
        with holder_identity(tmp_path, "node") as beside:  # the child lives: another id
            assert beside != dead and beside.startswith("node.")
            with holder_identity(tmp_path, "node") as third:
                assert third not in (dead, beside)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # the kernel dropped the killed one's flock: its id is free again, no new one is made
        with holder_identity(tmp_path, "node") as a, holder_identity(tmp_path, "node") as b, \
                holder_identity(tmp_path, "node") as c:
            assert {a, b, c} == {dead, beside, third}
    finally:
        child.kill()
        child.wait(timeout=10)


def test_a_holder_id_survives_restarts_and_is_unique_among_live_processes(
        tmp_path: Path) -> None:
    with holder_identity(tmp_path, "node") as one:
        with holder_identity(tmp_path, "node") as two:
            assert one != two
    with holder_identity(tmp_path, "node") as again:
        assert again == min(one, two)  # no new id while an old one is free
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{h}.holder" for h in (one, two))


def _apps(data_dir: Path, storage: Any) -> tuple[Any, Any]:
    processor = processor_app(ProcessorSettings(data_dir=data_dir, chunk_size=MIB,
                                                lease_seconds=3600, storage_url="http://storage"),
                              storage_transport=httpx.ASGITransport(app=storage))
    api = api_app(ApiSettings(data_dir=data_dir, processor_url="http://processor"),
                  processor_transport=httpx.ASGITransport(app=processor))
    return processor, api


async def _started(stack: AsyncExitStack, *apps: Any) -> None:
    for app in apps:
        await stack.enter_async_context(app.router.lifespan_context(app))


async def _gateway(stack: AsyncExitStack, api: Any, admin: str) -> httpx.AsyncClient:
    return await stack.enter_async_context(httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://api/v1",
        headers={"Authorization": f"Bearer {admin}"}, timeout=60))


async def test_a_restarted_processor_takes_its_dead_predecessor_s_lease_over_at_once(
        tmp_path: Path) -> None:
    """The crash-restart regression: a lease left by a processor that died (its holder id
    now free) does not block the processor restarted on the same data dir for the
    lease's hour; a live one beside it (another holder id) is still refused."""
    storage = storage_app(StorageSettings(data_dir=tmp_path))
    async with AsyncExitStack() as outer:
        await _started(outer, storage)
        service = (tmp_path / "secrets" / "service.token").read_text().strip()
        internal = await outer.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=storage), base_url="http://storage/internal/v1",
            headers={"Authorization": f"Bearer {service}"}, timeout=60))
        processor_b, api_b = _apps(tmp_path, storage)  # another processor on the data dir
        await _started(outer, processor_b, api_b)
        admin = (tmp_path / "secrets" / "admin.token").read_text().strip()
        via_b = await _gateway(outer, api_b, admin)
        async with AsyncExitStack() as first:
            processor, api = _apps(tmp_path, storage)
            await _started(first, processor, api)
            holder = processor.state.resources.engine.holder
            sid = (await (await _gateway(first, api, admin)).post("/sessions", json={})
                   ).json()["id"]
            # the predecessor dies holding the session's lease for an hour
            held = await internal.post(f"/sessions/{sid}/lease",
                                       json={"holder": holder, "ttl_seconds": 3600})
            assert held.status_code == 200 and held.json()["token"] == 1
        # (a processor started after the death would claim the dead one's id: the same node)
        assert processor_b.state.resources.engine.holder != holder
        r = await via_b.patch(f"/sessions/{sid}/upload", content=b"x" * 1000,
                              headers={**UPLOAD, "Upload-Offset": "0"})
        assert r.status_code == 409 and r.json()["error"] == "upload_in_progress", r.text

        async with AsyncExitStack() as restarted:
            processor, api = _apps(tmp_path, storage)
            await _started(restarted, processor, api)
            assert processor.state.resources.engine.holder == holder
            data = session_bytes(MIB + 99, seed=4)
            r = await (await _gateway(restarted, api, admin)).patch(
                f"/sessions/{sid}/upload", content=data,
                headers={**UPLOAD, "Upload-Offset": "0"})
            assert r.status_code == 200 and r.json()["offset"] == len(data), r.text
        # the takeover fenced the predecessor's token off: token 2, then released
        stale = await internal.post(f"/sessions/{sid}/lease/renew", json={
            "holder": holder, "token": 1, "ttl_seconds": 60})
        assert stale.status_code == 409 and stale.json()["error"] == "lease_lost"
        db = sqlite3.connect(tmp_path / "storage" / "metadata.sqlite3")
        try:
            assert db.execute("SELECT lease_token, lease_holder FROM sessions WHERE id = ?",
                              (sid,)).fetchone() == (2, None)
        finally:
            db.close()
