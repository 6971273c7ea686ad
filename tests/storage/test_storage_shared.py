"""Two storage processes in front of one metadata store and one S3 prefix (SeaweedFS, radosgw).

Each "process" is a `StorageService` of its own: its own metadata store instance (one
SQLite file, or one MongoDB), its own S3 client, its own per-session locks.  A late PUT
in one of them, a discard in the other while a commit runs, the orphan sweep's grace
rule (ages reckoned from an injected clock), a deleted session's strays, and the local
chunk directory refusing a second storage process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest

from sessions.common.ids import new_session_id
from sessions.core import leaf_hash
from sessions.storage.errors import ChunkNotStaged
from sessions.storage.metastore import MetadataStore
from sessions.storage.records import ChunkRecord, NewSession, WrappedKey
from sessions.storage.s3store import S3ChunkStore
from sessions.storage.service import StorageService
from sessions.storage.sweep import OrphanSweeper
from tests.storage.rgw_server import RgwServer
from tests.storage.s3_server import S3Server, s3_server  # noqa: F401 - a fixture
from tests.storage.test_chunkstore_contract import any_s3, s3_store  # noqa: F401 - a fixture

pytestmark = pytest.mark.anyio
MAX = 1 << 20
GRACE = 3600.0


class PausingBackend:
    """A real metadata backend that can stop once, right after its n-th session read, until
    resumed: how a storage process that checked a record is overtaken by another one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pause_at = 0
        self.reads = 0
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def arm(self, nth_read: int) -> None:
        self.reads, self.pause_at = 0, nth_read

    async def load_session(self, session_id: str) -> Any:
        rec = await self.inner.load_session(session_id)
        self.reads += 1
        if self.reads == self.pause_at:
            self.paused.set()
            await self.resume.wait()
        return rec


@pytest.fixture
async def two(open_store: Callable[[], Any], any_s3: S3Server | RgwServer,  # noqa: F811
              ) -> AsyncIterator[tuple[StorageService, StorageService, PausingBackend]]:
    """Storage A and storage B on one metadata database and one S3 prefix; B's backend pauses."""
    url = any_s3.url()  # SeaweedFS and radosgw in turn
    a_meta: MetadataStore = await open_store()
    b_backend = PausingBackend((await open_store()).backend)
    a = StorageService(a_meta, s3_store(any_s3, url), max_chunk_bytes=MAX, grace_seconds=GRACE)
    b = StorageService(MetadataStore(b_backend), s3_store(any_s3, url), max_chunk_bytes=MAX,
                       grace_seconds=GRACE)
    yield a, b, b_backend


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def new_session(service: StorageService) -> str:
    sid = new_session_id()
    await service.meta.create_session(NewSession(
        id=sid, wrapped_key=WrappedKey(key_id="k", blob=b"\1" * 60), chunk_size=1024,
        zstd_level=3, format_version=1))
    return sid


async def put(service: StorageService, sid: str, index: int, data: bytes) -> int:
    return await service.put_chunk(sid, index, body(data), leaf_hash=leaf_hash(data),
                                   content_length=len(data))


async def late_put(service: StorageService, sid: str, index: int, data: bytes) -> None:
    """Publish as a PUT does that passed its check just before a commit or an erase."""
    await service.chunks.put(sid, index, body(data), expected_leaf_hash=leaf_hash(data),
                             max_bytes=MAX)


def row(index: int, offset: int, data: bytes) -> ChunkRecord:
    return ChunkRecord(index=index, offset=offset, length=100, sealed_length=len(data),
                       compressed=True,
                       leaf_hash=leaf_hash(data))


async def read(service: StorageService, sid: str, index: int) -> bytes:
    _, pieces = await service.stream_chunk(sid, index)
    return b"".join([p async for p in pieces])


async def keys(service: StorageService, sid: str) -> list[str]:
    store = service.chunks
    assert isinstance(store, S3ChunkStore)
    return sorted(o["path"] for o in await obstore.list(store._store, sid).collect_async())


async def test_a_late_put_in_another_process_never_replaces_a_committed_chunk(
        two: tuple[StorageService, StorageService, PausingBackend]) -> None:
    """B's PUT passes B's check (index 0 uncommitted), A commits index 0, B publishes: the
    committed chunk stays, and both processes read it."""
    a, b, paused = two
    sid = await new_session(a)
    committed, late = b"the chunk A commits" * 50, b"B's late attempt" * 60
    await put(a, sid, 0, committed)
    paused.arm(2)  # B's second read is its check right before publishing
    stale = asyncio.create_task(put(b, sid, 0, late))
    await asyncio.wait_for(paused.paused.wait(), 30)
    await a.commit(sid, expected_offset=0, chunks=[row(0, 0, committed)])
    paused.resume.set()
    assert await stale == len(late)  # it published, after the commit
    assert await read(a, sid, 0) == committed
    assert await read(b, sid, 0) == committed
    assert len(await keys(a, sid)) == 2  # the late object is a stray, for the sweep


async def test_a_discard_in_another_process_never_removes_what_a_commit_names(
        two: tuple[StorageService, StorageService, PausingBackend]) -> None:
    """B commits index 0 (its object checked), A discards the session's staged chunks, B's
    commit lands: the chunk it committed is still there to read."""
    a, b, paused = two
    sid = await new_session(a)
    data = b"staged, then committed through B" * 40
    await put(a, sid, 0, data)
    paused.arm(2)  # B's commit: read 1 checks the lease, read 2 is the compare-and-set's
    commit = asyncio.create_task(b.commit(sid, expected_offset=0, chunks=[row(0, 0, data)]))
    await asyncio.wait_for(paused.paused.wait(), 30)
    assert await a.discard_staged(sid) == []  # staged just now: younger than the grace
    paused.resume.set()
    assert (await commit).chunk_count == 1
    assert await read(a, sid, 0) == data


async def test_a_commit_refuses_a_chunk_staged_more_than_half_the_grace_ago(
        two: tuple[StorageService, StorageService, PausingBackend]) -> None:
    a, _, _ = two
    sid = await new_session(a)
    data = b"staged long ago" * 10
    await put(a, sid, 0, data)
    a.clock = lambda: datetime.now(UTC) + timedelta(seconds=GRACE / 2 + 60)
    with pytest.raises(ChunkNotStaged, match="too long ago"):
        await a.commit(sid, expected_offset=0, chunks=[row(0, 0, data)])
    a.clock = lambda: datetime.now(UTC)
    before = await a.chunks.stat(sid, 0, leaf_hash=leaf_hash(data))
    await asyncio.sleep(1.2)  # S3 keeps LastModified to the second
    await put(a, sid, 0, data)  # staged again, the same bytes: its object is made fresh
    after = await a.chunks.stat(sid, 0, leaf_hash=leaf_hash(data))
    assert before is not None and after is not None and after.modified > before.modified
    assert (await a.commit(sid, expected_offset=0, chunks=[row(0, 0, data)])).chunk_count == 1


async def test_the_sweep_removes_strays_older_than_the_grace_only(
        two: tuple[StorageService, StorageService, PausingBackend]) -> None:
    a, b, _ = two
    sid = await new_session(a)
    first, second = b"chunk zero" * 30, b"chunk one" * 30
    await put(a, sid, 0, first)
    await put(a, sid, 1, second)
    await a.commit(sid, expected_offset=0, chunks=[row(0, 0, first), row(1, 100, second)])
    await late_put(b, sid, 0, b"late at a committed index")
    old_stray = b"staged, never committed"
    await put(a, sid, 2, old_stray)
    await asyncio.sleep(2.2)  # S3 keeps LastModified to the second
    young = b"staged just now"
    await put(b, sid, 3, young)
    sweeper = OrphanSweeper(b)
    assert len(await keys(a, sid)) == 5

    kept = await sweeper.run_pass()  # now: everything is far younger than the grace
    assert (kept.removed, kept.kept_young) == (0, 3) and len(await keys(a, sid)) == 5
    b.grace = timedelta(seconds=1.5)  # now the late object and the stray at 2 are old enough
    report = await sweeper.run_pass()
    assert (report.removed, report.kept_young, report.unknown) == (2, 1, [])
    left = await keys(a, sid)
    assert [k.split("/")[1] for k in left] == ["0000000000", "0000000001", "0000000003"]
    assert leaf_hash(first).hex() in left[0] and leaf_hash(young).hex() in left[2]
    assert await read(a, sid, 0) == first and await read(a, sid, 1) == second
    later = datetime.now(UTC) + timedelta(seconds=10)
    assert (await sweeper.run_pass(now=later)).removed == 1  # the young one, aged by the clock
    assert len(await keys(a, sid)) == 2


async def test_a_deleted_sessions_strays_go_at_any_age_and_unknown_ones_stay(
        two: tuple[StorageService, StorageService, PausingBackend]) -> None:
    a, b, _ = two
    sid = await new_session(a)
    await put(a, sid, 0, b"recorded")
    await a.delete(sid)
    await late_put(b, sid, 1, b"published after the erase")
    unknown = new_session_id()  # chunks under a session no record names
    await late_put(b, unknown, 0, b"x")
    report = await OrphanSweeper(b).sweep_all()
    assert report.removed == 1 and report.unknown == [unknown]
    assert await keys(a, sid) == [] and len(await keys(a, unknown)) == 1


def test_a_second_storage_process_on_one_data_dir_refuses_to_start(tmp_path: Path) -> None:
    """The local chunk directory serves one process: the second exits 3 and says why."""
    from sessions.client.launcher import free_port  # noqa: PLC0415

    env = {**os.environ, "LUCID_DATA_DIR": str(tmp_path), "LUCID_MODE": "local",
           "LUCID_LOG_LEVEL": "warning"}
    first = subprocess.Popen(  # noqa: S603 - this interpreter
        [sys.executable, "-m", "sessions.storage"], env={**env, "LUCID_STORAGE_PORT":
                                                        str(free_port())},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "storage" / "storage.lock"
        for _ in range(200):
            if lock.exists() and first.poll() is None:
                break
            time.sleep(0.05)
        second = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "sessions.storage"],
            env={**env, "LUCID_STORAGE_PORT": str(free_port())},
            capture_output=True, text=True, timeout=60)
        assert second.returncode == 3, second.returncode  # uvicorn: the lifespan failed
        assert "another storage process uses the chunk directory" in second.stderr
        assert "LUCID_CHUNK_STORE_URL" in second.stderr
        assert first.poll() is None  # the first one serves on
    finally:
        first.terminate()
        first.wait(timeout=30)


async def test_a_pass_examines_one_batch_and_the_next_pass_goes_on(
        two: tuple[StorageService, StorageService, PausingBackend]) -> None:
    a, b, _ = two
    sids = sorted([await new_session(a) for _ in range(3)])
    for sid in sids:
        await put(a, sid, 0, b"staged " + sid.encode())
    sweeper = OrphanSweeper(b, batch=2)
    later = datetime.now(UTC) + timedelta(seconds=GRACE + 60)  # every stray is old by then
    first = await sweeper.run_pass(now=later)
    assert (first.sessions, first.removed, first.done) == (2, 2, False)
    assert [len(await keys(a, sid)) for sid in sids] == [0, 0, 1]
    second = await sweeper.run_pass(now=later)
    assert (second.sessions, second.removed, second.done) == (1, 1, True)
    assert await a.chunks.session_ids() == []
