"""Retention, legal hold and crypto-erasure that holds against backups (issues #14, #11).

Real storage (SQLite file or MongoDB on the test server, chunk files) and a real
processor, wired in one process through httpx's ASGI transport, with the sweep's
clock injected: a session's expiry and the end of its retention period are reached
by moving that clock, never by waiting.  Each "restart" builds the apps again, as an
operator restarting the node would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from sessions.common.secrets import new_token, write_new_secret
from sessions.core import MasterKey, NoteSigner
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.keys.periods import PeriodKeys, period_end, period_of
from sessions.processor.main import create_app as processor_app
from sessions.processor.sweeper import ClockGuard, Sweeper, SweepReport
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.dburl import parse
from sessions.storage.main import create_app as storage_app
from tests.mongo_server import MongoServer, mongo_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.anyio
MIB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Wall and monotonic time for the sweep; `advance` moves both, `jump` only the wall."""

    def __init__(self, wall: datetime) -> None:
        self.wall, self.mono = wall, 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def jump(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)

    def set(self, wall: datetime) -> None:
        """Move the wall clock to `wall` with the monotonic clock in step (no jump)."""
        self.advance((wall - self.wall).total_seconds())


class Node:
    """One node's files: storage's data dir, the processor's keys, the metadata store."""

    def __init__(self, root: Path, url: str | None) -> None:
        self.root, self.url = root, url
        self.token = root / "service.token"
        write_new_secret(self.token, new_token())
        self.master = root / "master.key"
        write_new_secret(self.master, MasterKey.generate().to_text())
        self.signing = root / "signing.key"
        write_new_secret(self.signing, NoteSigner.generate("lucid-lifecycle").key_text())
        self.kek_dir = root / "kek"
        self.chunks = root / "storage" / "storage" / "chunks"

    @asynccontextmanager
    async def up(self, **processor: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        """Start storage and a processor (no background sweep); yield the processor app and
        a client of its internal API."""
        storage = storage_app(StorageSettings(
            mode="production", data_dir=self.root / "storage", service_token_file=self.token,
            metadata_url=self.url, min_free_bytes=0))
        settings = ProcessorSettings(
            mode="production", data_dir=self.root / "processor", service_token_file=self.token,
            master_key_file=self.master, signing_key_file=self.signing, kek_dir=self.kek_dir,
            storage_url="http://storage", chunk_size=MIB, sweep_interval=0, **processor)
        app = processor_app(settings, storage_transport=httpx.ASGITransport(app=storage))
        async with storage.router.lifespan_context(storage):
            for _ in range(300):  # MongoDB is prepared in the background
                if storage.state.resources.readiness.reason is None:
                    break
                await asyncio.sleep(0.1)
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://processor/internal/v1",
                    headers={"Authorization": f"Bearer {self.token.read_text().strip()}"},
                    timeout=30) as client:
                yield app, client

    # -- a backup of the metadata and the chunk files, and its restore ----------------------

    async def backup(self, name: str) -> None:
        shutil.copytree(self.chunks, self.root / f"{name}-chunks")
        if self.url is None:  # SQLite's online backup: a consistent copy of the live file
            with sqlite3.connect(self._sqlite()) as src, sqlite3.connect(
                    self.root / f"{name}.sqlite3") as dst:
                src.backup(dst)
            return
        parsed = parse(self.url)  # a dump of every document, as mongodump would take
        async with AsyncMongoClient(parsed.url) as client:
            db = client[parsed.database]
            self.dumps = {c: await db[c].find().to_list() for c in ("sessions", "chunks")}

    async def restore(self, name: str) -> None:
        shutil.rmtree(self.chunks)
        shutil.copytree(self.root / f"{name}-chunks", self.chunks)
        if self.url is None:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self._sqlite()) + suffix).unlink(missing_ok=True)  # noqa: ASYNC240
            shutil.copy(self.root / f"{name}.sqlite3", self._sqlite())
            return
        parsed = parse(self.url)
        async with AsyncMongoClient(parsed.url) as client:
            db = client[parsed.database]
            for collection, docs in self.dumps.items():
                await db[collection].delete_many({})
                await db[collection].insert_many(docs)

    def _sqlite(self) -> Path:
        return self.root / "storage" / "storage" / "metadata.sqlite3"


@pytest.fixture(params=["sqlite", "mongodb"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Node:
    url = None
    if request.param == "mongodb":
        server: MongoServer = request.getfixturevalue("mongo_server")
        url = server.url()
    return Node(tmp_path, url)


async def record(client: httpx.AsyncClient, data: bytes, **body: Any) -> str:
    sid: str = (await client.post("/sessions", json={"labels": {"u": "a"}, **body})).json()["id"]
    r = await client.patch(f"/sessions/{sid}/upload", content=data,
                           headers={"Upload-Offset": "0",
                                    "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 200, r.text
    return sid


def sweeper(app: FastAPI, clock: FakeClock, **guard: float) -> Sweeper:
    """Return a sweeper of the processor app on the injected clock."""
    return Sweeper(app.state.resources.engine, app.state.settings, guard=ClockGuard(
        tolerance=guard.get("tolerance", 120), settle=guard.get("settle", 3600),
        wall=lambda: clock.wall, mono=lambda: clock.mono))


async def test_expiry_erases_destroys_the_period_key_and_a_restored_backup_stays_erased(
        node: Node) -> None:
    """The promise of README "Retention, legal hold and limits": after the sweep erased a
    session and destroyed its period's key, restoring a backup taken before (metadata and
    chunk files) does not make it readable again: 409 key_unavailable, never a 500."""
    data, kept = os.urandom(MIB + 99), os.urandom(5000)
    async with node.up() as (app, client):
        sid = await record(client, data, retention_days=1)
        held = await record(client, kept, retention_days=1)
        forever = await record(client, kept)
        shown = (await client.get(f"/sessions/{sid}")).json()
        assert shown["retention_days"] == 1 and shown["legal_hold"] is False
        expires = datetime.strptime(shown["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC)
        period = period_of(expires)
        key_file = node.kek_dir / f"{period}.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert (await client.get(f"/sessions/{forever}")).json()["expires_at"] is None

        r = await client.put(f"/sessions/{held}/hold")
        assert r.status_code == 200 and r.json()["legal_hold"] is True
        await node.backup("before")  # a backup taken while all three lived

        clock = FakeClock(expires - timedelta(hours=1))
        sweep = sweeper(app, clock)
        assert (await sweep.run_pass()).erased == []  # not yet expired
        clock.set(expires + timedelta(minutes=1))
        report = await sweep.run_pass()
        assert report.erased == [sid] and report.destroyed_periods == []  # period not over
        assert (await client.get(f"/sessions/{sid}")).json()["state"] == "deleted"
        assert key_file.exists()
        entries = (await client.get("/audit", params={"session_id": sid})).json()["items"]
        assert [(e["action"], e["actor"]) for e in entries][-1] == ("expire", "sweeper")

        clock.set(period_end(period) + timedelta(seconds=1))
        report = await sweep.run_pass()
        assert report.erased == [] and report.destroyed_periods == [period]
        assert not key_file.exists()
        assert (await client.get(f"/sessions/{held}/replay")).content == kept  # held: kept
        r = await client.delete(f"/sessions/{held}")
        assert r.status_code == 409 and r.json()["error"] == "legal_hold"

    await node.restore("before")
    async with node.up() as (app, client):
        restored = (await client.get(f"/sessions/{sid}")).json()
        assert restored["state"] == "recording"  # the backup's record, wrapped key and all
        r = await client.get(f"/sessions/{sid}/replay")
        assert r.status_code == 409 and r.json()["error"] == "key_unavailable"
        r = await client.post(f"/sessions/{sid}/verify")
        assert r.status_code in (200, 409) and r.status_code != 500
        assert (await client.get(f"/sessions/{held}/replay")).content == kept
        assert (await client.get(f"/sessions/{forever}/replay")).content == kept


async def test_a_released_hold_goes_back_under_a_period_key_and_expires(node: Node) -> None:
    async with node.up() as (app, client):
        sid = await record(client, b"evidence" * 100, retention_days=3)
        first_kek = node.kek_dir
        r = await client.put(f"/sessions/{sid}/hold")
        assert r.json()["legal_hold"] is True
        assert (await client.put(f"/sessions/{sid}/hold")).status_code == 200  # idempotent
        expires = datetime.strptime(r.json()["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC)
        clock = FakeClock(expires + timedelta(days=40))
        sweep = sweeper(app, clock)
        report = await sweep.run_pass()
        assert report.erased == [] and report.destroyed_periods == [period_of(expires)]
        assert (await client.get(f"/sessions/{sid}/replay")).content == b"evidence" * 100
        r = await client.delete(f"/sessions/{sid}/hold")
        assert r.status_code == 200 and r.json()["legal_hold"] is False
        # released after its own period's key was destroyed: the current period's key wraps it
        assert (first_kek / f"{period_of(datetime.now(UTC))}.key").exists()
        assert (await client.get(f"/sessions/{sid}/replay")).content == b"evidence" * 100
        assert (await sweep.run_pass()).erased == [sid]


async def test_the_sweep_does_not_act_on_a_clock_jump(tmp_path: Path) -> None:
    """A Pi without an RTC battery boots in the past, then NTP steps the clock forward."""
    node = Node(tmp_path, None)
    async with node.up() as (app, client):
        sid = await record(client, b"x" * 1000, retention_days=1)
        expires = datetime.strptime((await client.get(f"/sessions/{sid}")).json()["expires_at"],
                                    "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        clock = FakeClock(datetime(1970, 1, 1, 0, 1, tzinfo=UTC))  # booted without a clock
        sweep = sweeper(app, clock, tolerance=60, settle=600)
        assert (await sweep.run_pass()).acted is False  # before the sanity floor
        clock.advance(30)
        clock.jump((expires + timedelta(days=400) - clock.wall).total_seconds())  # NTP step
        report = await sweep.run_pass()
        assert report.acted is False and "jumped" in (sweep.guard.reason or "")
        clock.advance(300)
        assert (await sweep.run_pass()).acted is False  # not yet steady for `settle`
        assert (await client.get(f"/sessions/{sid}")).json()["state"] == "recording"
        clock.advance(301)
        report = await sweep.run_pass()
        assert report.acted and report.erased == [sid]


async def test_a_jump_backwards_pauses_too_and_newer_records_are_not_idle(
        tmp_path: Path) -> None:
    node = Node(tmp_path, None)
    async with node.up(idle_deadline=60) as (app, client):
        sid = await record(client, b"y" * 1000)
        clock = FakeClock(datetime.now(UTC) + timedelta(hours=2))
        sweep = sweeper(app, clock, tolerance=60, settle=0)
        assert (await sweep.run_pass()).finalized == [sid]  # idle past its deadline
        other = await record(client, b"z" * 1000)
        clock.jump(-7200 - 3600)  # an hour before the record was written
        assert (await sweep.run_pass()).acted is False
        clock.advance(1)
        report = await sweep.run_pass()  # settle 0: acts, but the record is newer than "now"
        assert report.acted and report.finalized == []
        assert (await client.get(f"/sessions/{other}")).json()["state"] == "recording"


def test_clock_guard_units() -> None:
    clock = FakeClock(datetime(2026, 6, 1, tzinfo=UTC))
    guard = ClockGuard(tolerance=10, settle=100, wall=lambda: clock.wall,
                       mono=lambda: clock.mono)
    assert guard.check() == clock.wall  # a first reading after the floor is trusted
    clock.advance(50)
    clock.jump(9)  # within the tolerance: drift is not a jump
    assert guard.check() == clock.wall
    clock.jump(-11)
    assert guard.check() is None
    clock.advance(99)
    assert guard.check() is None
    clock.advance(2)
    assert guard.check() == clock.wall
    assert isinstance(SweepReport(), SweepReport)


async def test_an_unwritable_key_directory_refuses_retained_sessions_cleanly(
        tmp_path: Path) -> None:
    node = Node(tmp_path, None)
    node.kek_dir.parent.mkdir(parents=True, exist_ok=True)
    node.kek_dir.write_text("not a directory")  # as a read-only container without its volume
    async with node.up() as (_, client):
        r = await client.post("/sessions", json={"retention_days": 3})
        assert r.status_code == 503 and r.json()["error"] == "key_store_unavailable"
        assert (await client.post("/sessions", json={})).status_code == 201  # kept forever


def test_period_keys_are_0600_files_destroyed_only_under_the_id_checked(tmp_path: Path) -> None:
    keys = PeriodKeys(tmp_path / "kek")
    first = keys.for_period("2026-12")
    path = tmp_path / "kek" / "2026-12.key"
    assert path.stat().st_mode & 0o777 == 0o600 and keys.for_period("2026-12") is first
    assert PeriodKeys(tmp_path / "kek").get(first.key_id) is not None  # another processor
    assert keys.destroy("2026-12", key_id="0" * 16) is False and path.exists()
    assert keys.destroy("2026-12", key_id=first.key_id) is True and not path.exists()
    assert keys.destroy("2026-12", key_id=first.key_id) is False
    assert keys.get(first.key_id) is None
    # two processors sharing the directory: a key one destroys is gone for the other too
    mine, theirs = PeriodKeys(tmp_path / "kek"), PeriodKeys(tmp_path / "kek")
    second = mine.for_period("2027-01")
    assert theirs.get(second.key_id) is not None  # cached by the other processor now
    assert mine.destroy("2027-01", key_id=second.key_id) is True
    assert theirs.get(second.key_id) is None and "2027-01" not in theirs.periods()
    assert theirs.for_period("2027-01").key_id != second.key_id  # remade, not revived
    assert period_end("2026-12") == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end("2027-02") == datetime(2027, 3, 1, tzinfo=UTC)
    assert period_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
