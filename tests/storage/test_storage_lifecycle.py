"""The lifecycle contract, on both backends: legal hold, expiry, idle sessions, key usage,
and two sweepers erasing from one store at once.

Parametrised over SQLite and MongoDB (the `meta_url` fixture), as the rest of the
metadata contract; the query plans of the sweep's questions are checked per backend.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from sessions.client.launcher import REPO
from sessions.common.errors import Conflict, InvalidParameter, InvalidState, LegalHold
from sessions.common.states import SessionState
from sessions.storage import _sql
from sessions.storage.dburl import MetadataUrl
from sessions.storage.metastore import MetadataStore, open_metastore, rfc3339
from sessions.storage.records import NewSession, WrappedKey
from tests.storage.sweep_worker import sweep

pytestmark = pytest.mark.anyio
MakeSession = Callable[..., NewSession]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = WrappedKey(key_id="master-1", blob=b"\x01" * 60)
HELD_KEY = WrappedKey(key_id="hold-kek", blob=b"\x02" * 60)


class Clock:
    """A settable clock for the store (what `created_at` and `updated_at` say)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def clocked(meta_url: MetadataUrl):  # type: ignore[no-untyped-def]
    clock = Clock()
    store = await open_metastore(meta_url, clock=clock)
    yield store, clock
    await store.close()


def at(days: float) -> str:
    return rfc3339(T0 + timedelta(days=days))


async def test_expires_at_is_created_plus_retention(clocked, new_session: MakeSession) -> None:  # type: ignore[no-untyped-def]
    store, _ = clocked
    kept = await store.create_session(new_session(retention_days=None))
    month = await store.create_session(new_session(retention_days=30))
    assert kept.expires_at is None
    assert month.expires_at == at(30) and (await store.get_session(month.id)).expires_at == at(30)


async def test_legal_hold_blocks_erasure_until_released(meta: MetadataStore,
                                                        new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session(wrapped_key=KEY))
    held = await meta.set_hold(rec.id, hold=True, expected_key_id="master-1", wrapped=HELD_KEY)
    assert held.legal_hold and held.wrapped_key == HELD_KEY
    assert await meta.get_session(rec.id) == held
    with pytest.raises(LegalHold) as refused:
        await meta.erase(rec.id)
    assert (refused.value.status, refused.value.code) == (409, "legal_hold")
    with pytest.raises(LegalHold):
        await meta.transition(rec.id, to=SessionState.DELETED)
    assert (await meta.get_session(rec.id)).wrapped_key == HELD_KEY
    released = await meta.set_hold(rec.id, hold=False, expected_key_id="hold-kek", wrapped=KEY)
    assert not released.legal_hold and released.wrapped_key == KEY
    erased = await meta.erase(rec.id)
    assert (erased.state, erased.wrapped_key, erased.expires_at) == (
        SessionState.DELETED, None, None)


async def test_hold_is_a_compare_and_set_on_the_key_id(meta: MetadataStore,
                                                       new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session(wrapped_key=KEY))
    with pytest.raises(Conflict):
        await meta.set_hold(rec.id, hold=True, expected_key_id="other", wrapped=HELD_KEY)
    assert not (await meta.get_session(rec.id)).legal_hold
    await meta.erase(rec.id)
    with pytest.raises(InvalidState):
        await meta.set_hold(rec.id, hold=True, expected_key_id="master-1", wrapped=HELD_KEY)


async def test_expired_lists_live_unheld_sessions_oldest_first(
        clocked, new_session: MakeSession) -> None:  # type: ignore[no-untyped-def]
    store, clock = clocked
    one = await store.create_session(new_session(retention_days=1))
    clock.now = T0 + timedelta(hours=1)
    two = await store.create_session(new_session(retention_days=1))
    held = await store.create_session(new_session(retention_days=1, wrapped_key=KEY))
    await store.set_hold(held.id, hold=True, expected_key_id="master-1", wrapped=HELD_KEY)
    gone = await store.create_session(new_session(retention_days=1))
    await store.erase(gone.id)
    await store.create_session(new_session(retention_days=30))
    await store.create_session(new_session(retention_days=None))

    assert await store.list_expired(before=at(0.5), limit=10) == []
    due = await store.list_expired(before=at(2), limit=10)
    assert [r.id for r in due] == [one.id, two.id]
    assert [r.id for r in await store.list_expired(before=at(2), limit=1)] == [one.id]
    assert [r.id for r in await store.list_expired(before=one.expires_at or "", limit=5)] == [
        one.id]  # at the instant of expiry
    with pytest.raises(InvalidParameter):
        await store.list_expired(before="2026-03-01", limit=1)


async def test_idle_lists_sessions_unchanged_since(clocked, new_session: MakeSession) -> None:  # type: ignore[no-untyped-def]
    store, clock = clocked
    stale = await store.create_session(new_session())
    busy = await store.create_session(new_session())
    done = await store.create_session(new_session())
    await store.transition(done.id, to=SessionState.FINALIZING)
    clock.now = T0 + timedelta(hours=2)
    await store.set_upload_length(busy.id, 100)  # any write moves updated_at
    idle = await store.list_idle(state=SessionState.RECORDING, before=at(0.05), limit=10)
    assert [r.id for r in idle] == [stale.id]
    stuck = await store.list_idle(state=SessionState.FINALIZING, before=at(1), limit=10)
    assert [r.id for r in stuck] == [done.id]
    with pytest.raises(InvalidState):
        await store.list_idle(state=SessionState.COMPLETED, before=at(1), limit=10)


async def test_key_usage_counts_wrapped_keys(meta: MetadataStore,
                                             new_session: MakeSession) -> None:
    a = await meta.create_session(new_session(wrapped_key=WrappedKey("kek-a", b"\x03" * 60)))
    await meta.create_session(new_session(wrapped_key=WrappedKey("kek-a", b"\x04" * 60)))
    await meta.create_session(new_session(wrapped_key=WrappedKey("kek-b", b"\x05" * 60)))
    assert await meta.key_usage() == {"kek-a": 2, "kek-b": 1}
    await meta.erase(a.id)
    assert await meta.key_usage() == {"kek-a": 1, "kek-b": 1}


async def test_two_sweepers_at_once_erase_each_session_once_and_never_a_held_one(
        meta_url: MetadataUrl, new_session: MakeSession) -> None:
    """Two store instances (two connections; two clients on MongoDB) sweep concurrently.

    Each lists a bounded batch of expired sessions and erases it; both race on the same
    records.  The compare-and-set settles every race: no error, every expired session
    erased, the held one untouched.
    """
    clock = Clock()
    stores = [await open_metastore(meta_url, clock=clock) for _ in range(2)]
    try:
        expired = [await stores[0].create_session(new_session(retention_days=1))
                   for _ in range(16)]
        held = await stores[0].create_session(new_session(retention_days=1, wrapped_key=KEY))
        await stores[0].set_hold(held.id, hold=True, expected_key_id="master-1",
                                 wrapped=HELD_KEY)
        young = await stores[0].create_session(new_session(retention_days=9))
        clock.now = T0 + timedelta(days=2)
        passes: list[int] = [0, 0]

        async def sweep(n: int) -> None:
            while batch := await stores[n].list_expired(before=at(2), limit=5):
                passes[n] += 1
                for rec in batch:
                    await stores[n].erase(rec.id)
                    await asyncio.sleep(0)

        await asyncio.gather(sweep(0), sweep(1))
        assert all(passes)
        for rec in expired:
            after = await stores[1].get_session(rec.id)
            assert (after.state, after.wrapped_key, after.expires_at) == (
                SessionState.DELETED, None, None)
            assert after.revision == rec.revision + 1  # erased exactly once
        assert (await stores[1].get_session(held.id)).legal_hold
        assert (await stores[1].get_session(young.id)).state is SessionState.RECORDING
    finally:
        for store in stores:
            await store.close()


async def test_two_sweeper_processes_on_one_store(meta_url: MetadataUrl,
                                                  new_session: MakeSession) -> None:
    """The same race with the second sweeper in another process (SQLite file, MongoDB)."""
    clock = Clock()
    store = await open_metastore(meta_url, clock=clock)
    try:
        expired = [await store.create_session(new_session(retention_days=1))
                   for _ in range(30)]
        held = await store.create_session(new_session(retention_days=1, wrapped_key=KEY))
        await store.set_hold(held.id, hold=True, expected_key_id="master-1", wrapped=HELD_KEY)
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.storage.sweep_worker", meta_url.url, at(2), "4",
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert other.stdout is not None and other.stdin is not None
        assert (await other.stdout.readline()).strip() == b"ready"
        other.stdin.write(b"go\n")
        await other.stdin.drain()
        ours = await sweep(store, at(2), 4)
        theirs = int((await other.stdout.read()).decode())
        assert await other.wait() == 0
        assert ours + theirs >= 30 // 4
        for rec in expired:
            after = await store.get_session(rec.id)
            assert (after.state, after.wrapped_key) == (SessionState.DELETED, None)
            assert after.revision == rec.revision + 1  # erased exactly once
        assert (await store.get_session(held.id)).legal_hold
        assert await store.list_expired(before=at(2), limit=10) == []
    finally:
        await store.close()


async def test_the_sweep_questions_use_indexes(meta: MetadataStore, meta_url: MetadataUrl,
                                               backend: str, new_session: MakeSession) -> None:
    """Neither store scans every session to answer the sweep (query plans, both backends)."""
    for days in (1, 2, None):
        await meta.create_session(new_session(retention_days=days))
    if backend == "sqlite":
        with sqlite3.connect(meta_url.path) as db:
            for sql, params, index in (
                    (_sql.SELECT_EXPIRED, (at(1), 5), "sessions_by_expiry"),
                    (_sql.SELECT_IDLE, ("recording", at(1), 5), "sessions_by_state_updated"),
                    (_sql.KEY_USAGE, (), "sessions_by_key_id")):
                plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, params))
                assert f"INDEX {index}" in plan, plan
        return
    async with AsyncMongoClient(meta_url.url) as client:
        db = client[meta_url.database]
        names = {i["name"] async for i in await db.sessions.list_indexes()}
        assert {"by_expiry", "by_state_updated", "by_key_id"} <= names
        for query, order, index in (
                ({"legal_hold": False, "expires_at": {"$lte": at(1)}}, "expires_at",
                 "by_expiry"),
                ({"state": "recording", "updated_at": {"$lt": at(1)}}, "updated_at",
                 "by_state_updated")):
            plan = await db.command("explain", {"find": "sessions", "filter": query,
                                                "sort": {order: 1}, "limit": 5})
            winning = str(plan["queryPlanner"]["winningPlan"])
            assert f"'indexName': '{index}'" in winning and "COLLSCAN" not in winning, winning
