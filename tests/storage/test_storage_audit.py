"""The audit log's metadata contract, on both backends: append-only, one chain, no fork.

`meta` and `open_store` are parametrised over SQLite and MongoDB (conftest.py), so both
stores are held to the same rules.  The signature over the head is the processor's
business; here the checkpoint is a placeholder string that must be kept as given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sessions.common.errors import Conflict, MetadataCorrupt
from sessions.core import AUDIT_GENESIS, AuditEntry
from sessions.storage.metastore import MetadataStore

pytestmark = pytest.mark.anyio
OpenStore = Callable[[], Awaitable[MetadataStore]]
SID = "01HF7YAT00KA68J0FJ9R690X42"


def entry(seq: int, prev: bytes, *, session_id: str | None = SID,
          action: str = "append") -> AuditEntry:
    return AuditEntry(seq=seq, at=f"2026-12-02T00:00:{seq % 60:02d}.000000Z", action=action,
                      actor="tok-1", client="127.0.0.1", session_id=session_id,
                      detail=f"n={seq}", prev=prev)


async def append_next(store: MetadataStore, **kw: object) -> AuditEntry:
    """Append the next link on whatever head the store has now, retrying lost races."""
    for _ in range(50):
        size, head = await store.audit_head()
        e = entry(size, head, **kw)  # type: ignore[arg-type]
        try:
            await store.append_audit(e, f"head {size + 1}")
        except Conflict:
            continue
        return e
    raise AssertionError("50 lost races in a row")


async def test_appends_chain_and_read_back_in_order(meta: MetadataStore) -> None:
    assert await meta.audit_head() == (0, AUDIT_GENESIS)
    assert await meta.audit_checkpoint() is None
    made = [await append_next(meta, session_id=SID if i % 2 else None) for i in range(5)]
    entries, next_start = await meta.list_audit()
    assert entries == made and next_start is None
    assert [e.prev for e in entries[1:]] == [e.hash() for e in entries[:-1]]
    assert await meta.audit_head() == (5, made[-1].hash())
    assert await meta.audit_checkpoint() == "head 5"


async def test_pages_and_session_filter(meta: MetadataStore) -> None:
    made = [await append_next(meta, session_id=SID if i % 2 else None) for i in range(7)]
    first, nxt = await meta.list_audit(limit=3)
    assert first == made[:3] and nxt == 3
    rest, end = await meta.list_audit(start=nxt, limit=10)
    assert rest == made[3:] and end is None
    mine, _ = await meta.list_audit(session_id=SID)
    assert mine == [e for e in made if e.session_id == SID]


async def test_an_entry_off_the_head_is_refused(meta: MetadataStore) -> None:
    first = await append_next(meta)
    with pytest.raises(Conflict) as wrong_seq:
        await meta.append_audit(entry(5, first.hash()), "x")
    assert wrong_seq.value.extra["size"] == 1
    with pytest.raises(Conflict):  # right number, wrong previous hash: a fork
        await meta.append_audit(entry(1, AUDIT_GENESIS), "x")
    with pytest.raises(Conflict):  # a repeat of entry 0
        await meta.append_audit(entry(0, AUDIT_GENESIS), "x")
    assert (await meta.list_audit())[0] == [first]
    assert await meta.audit_checkpoint() == "head 1"


async def test_concurrent_appends_on_two_stores_never_fork(open_store: OpenStore) -> None:
    """Two store instances (two storage processes) append at once: one chain, no gap."""
    a, b = await open_store(), await open_store()
    await asyncio.gather(*(append_next(s) for s in (a, b) for _ in range(6)))
    entries, _ = await a.list_audit(limit=100)
    assert [e.seq for e in entries] == list(range(12))
    assert all(e.prev == p.hash() for p, e in zip(entries, entries[1:], strict=False))
    assert await b.audit_checkpoint() == "head 12"


async def test_a_log_shorter_than_its_signed_head_is_not_extended(meta: MetadataStore) -> None:
    """Entries removed behind the store's back: no append may sign over the gap."""
    made = [await append_next(meta) for _ in range(3)]
    await meta.backend.append_audit(entry(3, made[-1].hash()), "head 4")
    # the backend alone cannot remove; pretend the head says more than is stored
    if hasattr(meta.backend, "_conn"):
        db = meta.backend._conn()  # type: ignore[attr-defined]
        db.execute("UPDATE audit_head SET size = 9")
    else:
        await meta.backend._meta.update_one(  # type: ignore[attr-defined]
            {"_id": "audit_head"}, {"$set": {"size": 9}})
    size, head = await meta.audit_head()
    with pytest.raises(MetadataCorrupt):
        await meta.append_audit(entry(size, head), "head 5")
