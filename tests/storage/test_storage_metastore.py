"""The metadata contract, on both backends: records, listing, the state machine, commits, erasure.

Every test runs once per backend (`meta` is parametrised in conftest.py), so SQLite and
MongoDB are held to the same behaviour.  Backend-specific tests live in
test_storage_sqlite.py and test_storage_mongo.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from sessions.common.errors import (
    BadRequest,
    Conflict,
    InvalidId,
    InvalidParameter,
    InvalidState,
    OffsetMismatch,
    PayloadTooLarge,
    SessionNotFound,
)
from sessions.common.states import TRANSITIONS, SessionState
from sessions.storage.errors import ChunkCommitted
from sessions.storage.metastore import MetadataStore
from sessions.storage.records import ChunkRecord, NewSession, WrappedKey

pytestmark = pytest.mark.anyio
MakeSession = Callable[..., NewSession]
OpenStore = Callable[[], Awaitable[MetadataStore]]
RECORDING, FINALIZING, COMPLETED = (SessionState.RECORDING, SessionState.FINALIZING,
                                    SessionState.COMPLETED)


def chunks(start_index: int, start_offset: int, *lengths: int) -> list[ChunkRecord]:
    out, offset = [], start_offset
    for i, length in enumerate(lengths):
        out.append(ChunkRecord(index=start_index + i, offset=offset, length=length,
                               sealed_length=length + 40, leaf_hash=bytes([i]) * 32,
                               compressed=i % 2 == 0))
        offset += length
    return out


async def test_create_and_get_round_trip(meta: MetadataStore,
                                         new_session: MakeSession) -> None:
    new = new_session(labels={"host": "web-1", "team": "ops"})
    created = await meta.create_session(new)
    got = await meta.get_session(new.id)
    assert got == created
    assert got.state is RECORDING
    assert got.labels == {"host": "web-1", "team": "ops"}
    assert got.wrapped_key == new.wrapped_key
    assert (got.offset, got.chunk_count, got.sealed_bytes, got.root_hash) == (0, 0, 0, None)
    assert got.created_at.endswith("Z") and got.created_at == got.updated_at


async def test_create_duplicate_is_conflict(meta: MetadataStore,
                                            new_session: MakeSession) -> None:
    new = new_session()
    await meta.create_session(new)
    with pytest.raises(Conflict):
        await meta.create_session(new)


async def test_create_rejects_malformed_id(meta: MetadataStore,
                                           new_session: MakeSession) -> None:
    with pytest.raises(InvalidId):
        await meta.create_session(new_session(id="../etc/passwd"))


async def test_get_unknown_session(meta: MetadataStore, new_session: MakeSession) -> None:
    with pytest.raises(SessionNotFound):
        await meta.get_session(new_session().id)


async def test_list_newest_first_with_filters(meta: MetadataStore,
                                              new_session: MakeSession) -> None:
    a = await meta.create_session(new_session(labels={"host": "a", "env": "prod"}))
    b = await meta.create_session(new_session(labels={"host": "b", "env": "prod"}))
    c = await meta.create_session(new_session(labels={"host": "a", "env": "dev"}))
    await meta.transition(b.id, to=FINALIZING)

    items, cursor = await meta.list_sessions()
    assert [r.id for r in items] == [c.id, b.id, a.id] and cursor is None
    assert items[0].labels == {"host": "a", "env": "dev"}
    items, _ = await meta.list_sessions(state=RECORDING)
    assert [r.id for r in items] == [c.id, a.id]
    items, _ = await meta.list_sessions(labels=[("env", "prod")])
    assert [r.id for r in items] == [b.id, a.id]
    items, _ = await meta.list_sessions(labels=[("env", "prod"), ("host", "a")])
    assert [r.id for r in items] == [a.id]
    items, _ = await meta.list_sessions(state=FINALIZING, labels=[("host", "a")])
    assert items == []


async def test_list_pages_are_stable(meta: MetadataStore, new_session: MakeSession) -> None:
    made = [(await meta.create_session(new_session())).id for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        items, cursor = await meta.list_sessions(cursor=cursor, limit=3)
        seen += [r.id for r in items]
        pages += 1
        if cursor is None:
            break
    assert seen == list(reversed(made))
    assert pages == 3


async def test_list_rejects_malformed_cursor(meta: MetadataStore) -> None:
    with pytest.raises(InvalidId):
        await meta.list_sessions(cursor="x' OR 1=1 --")


async def test_transition_follows_the_state_machine(meta: MetadataStore,
                                                    new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    moved = await meta.transition(rec.id, to=FINALIZING, allowed_from=[RECORDING])
    assert moved.state is FINALIZING
    with pytest.raises(InvalidState) as info:
        await meta.transition(rec.id, to=FINALIZING, allowed_from=[RECORDING])
    assert info.value.extra == {"state": "finalizing"}
    with pytest.raises(InvalidState):
        await meta.transition(rec.id, to=RECORDING)
    failed = await meta.transition(rec.id, to=SessionState.FAILED)
    assert failed.state is SessionState.FAILED
    with pytest.raises(SessionNotFound):
        await meta.transition(new_session().id, to=FINALIZING)


async def test_transition_to_deleted_drops_the_key(meta: MetadataStore,
                                                   new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    gone = await meta.transition(rec.id, to=SessionState.DELETED)
    assert gone.state is SessionState.DELETED and gone.wrapped_key is None


async def test_commit_advances_the_session(meta: MetadataStore,
                                           new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    after = await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 100, 50))
    assert (after.offset, after.chunk_count, after.sealed_bytes) == (150, 2, 230)
    after = await meta.commit_chunks(rec.id, expected_offset=150, chunks=chunks(2, 150, 7))
    assert (after.offset, after.chunk_count, after.sealed_bytes) == (157, 3, 277)
    listed = await meta.list_chunks(rec.id)
    assert listed == chunks(0, 0, 100, 50) + chunks(2, 150, 7)
    assert await meta.list_chunks(rec.id, start=1, limit=1) == chunks(0, 0, 100, 50)[1:]


async def test_commit_offset_mismatch_reports_the_offset(meta: MetadataStore,
                                                         new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10))
    with pytest.raises(OffsetMismatch) as info:
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(1, 0, 10))
    assert info.value.extra == {"offset": 10}
    with pytest.raises(OffsetMismatch) as info:
        await meta.commit_chunks(rec.id, expected_offset=20, chunks=chunks(1, 20, 10))
    assert info.value.extra == {"offset": 10}


@pytest.mark.parametrize("bad", [
    pytest.param(chunks(1, 0, 10), id="index-skips"),
    pytest.param(chunks(0, 5, 10), id="offset-gap"),
    pytest.param(chunks(0, 0, 10) + chunks(2, 10, 10), id="index-gap-inside"),
    pytest.param(chunks(0, 0, 10) + chunks(1, 11, 10), id="offset-gap-inside"),
])
async def test_commit_rejects_non_contiguous_chunks(meta: MetadataStore,
                                                    new_session: MakeSession,
                                                    bad: list[ChunkRecord]) -> None:
    rec = await meta.create_session(new_session())
    with pytest.raises(Conflict):
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=bad)
    assert await meta.get_session(rec.id) == rec
    assert await meta.list_chunks(rec.id) == []


async def test_commit_rejects_bad_leaf_hash_length(meta: MetadataStore,
                                                   new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    bad = ChunkRecord(index=0, offset=0, length=1, sealed_length=2, leaf_hash=b"x",
                      compressed=False)
    with pytest.raises(BadRequest):
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=[bad])


async def test_commit_needs_recording(meta: MetadataStore,
                                      new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.transition(rec.id, to=FINALIZING)
    with pytest.raises(InvalidState):
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10))


async def test_leaf_hashes(meta: MetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    assert await meta.leaf_hashes(rec.id) == b""
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 1, 2, 3))
    assert await meta.leaf_hashes(rec.id) == b"\x00" * 32 + b"\x01" * 32 + b"\x02" * 32
    assert await meta.leaf_hashes(rec.id, size=2) == b"\x00" * 32 + b"\x01" * 32
    assert await meta.leaf_hashes(rec.id, size=0) == b""
    with pytest.raises(InvalidParameter) as info:
        await meta.leaf_hashes(rec.id, size=4)
    assert info.value.extra == {"chunk_count": 3}


async def test_finalize_and_manifest(meta: MetadataStore,
                                     new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    root = b"\xab" * 32
    with pytest.raises(InvalidState):
        await meta.finalize(rec.id, root_hash=root, checkpoint="cp\n", manifest=b"{}")
    with pytest.raises(InvalidState):  # none stored before completion: 409, not 404
        await meta.get_manifest(rec.id)
    await meta.transition(rec.id, to=FINALIZING)
    done = await meta.finalize(rec.id, root_hash=root, checkpoint="cp\n", manifest=b'{"a":1}')
    assert done.state is COMPLETED and done.root_hash == root
    again = await meta.finalize(rec.id, root_hash=root, checkpoint="cp\n", manifest=b'{"a":1}')
    assert again == done
    with pytest.raises(Conflict):
        await meta.finalize(rec.id, root_hash=b"\xcd" * 32, checkpoint="cp\n", manifest=b"{}")
    assert await meta.get_manifest(rec.id) == b'{"a":1}'
    with pytest.raises(BadRequest):
        await meta.finalize(rec.id, root_hash=b"short", checkpoint="cp", manifest=b"{}")


async def test_erase_is_idempotent(meta: MetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    first = await meta.erase(rec.id)
    assert first.state is SessionState.DELETED and first.wrapped_key is None
    assert await meta.erase(rec.id) == first
    with pytest.raises(SessionNotFound):
        await meta.erase(new_session().id)
    with pytest.raises(InvalidState):
        await meta.transition(rec.id, to=RECORDING)


async def test_count_by_state(meta: MetadataStore, new_session: MakeSession) -> None:
    a = await meta.create_session(new_session())
    await meta.create_session(new_session())
    await meta.erase(a.id)
    counts = await meta.count_by_state()
    assert counts == {"recording": 1, "finalizing": 0, "completed": 0, "failed": 0,
                      "deleted": 1}




# -- appends: at the committed offset, idempotent repeats, no rewriting -----------------------


async def test_repeated_commit_is_idempotent(meta: MetadataStore,
                                             new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    first = await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10, 20))
    again = await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10, 20))
    assert again == first
    tail = await meta.commit_chunks(rec.id, expected_offset=10, chunks=chunks(0, 0, 10, 20)[1:])
    assert tail == first
    assert await meta.list_chunks(rec.id) == chunks(0, 0, 10, 20)


async def test_a_different_chunk_at_a_committed_index_is_refused(
        meta: MetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    done = await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10))
    other = ChunkRecord(index=0, offset=0, length=10, sealed_length=50,
                        leaf_hash=b"\x7f" * 32, compressed=True)
    with pytest.raises(ChunkCommitted) as info:
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=[other])
    assert info.value.extra == {"chunk_count": 1}
    assert await meta.get_session(rec.id) == done
    assert await meta.list_chunks(rec.id) == chunks(0, 0, 10)


async def test_empty_commit_changes_nothing(meta: MetadataStore,
                                            new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    assert await meta.commit_chunks(rec.id, expected_offset=0, chunks=[]) == rec


async def test_concurrent_commits_from_two_instances_have_one_winner(
        open_store: OpenStore, new_session: MakeSession) -> None:
    a, b = await open_store(), await open_store()
    rec = await a.create_session(new_session())

    async def commit(store: MetadataStore, tag: int) -> object:
        batch = [ChunkRecord(index=0, offset=0, length=10 + tag, sealed_length=60,
                             leaf_hash=bytes([tag]) * 32, compressed=False)]
        try:
            return await store.commit_chunks(rec.id, expected_offset=0, chunks=batch)
        except (OffsetMismatch, ChunkCommitted) as exc:
            return exc

    results = await asyncio.gather(*(commit(s, t) for t, s in zip(range(1, 9),
                                                                 itertools.cycle((a, b)))))
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    after = await b.get_session(rec.id)
    assert after.chunk_count == 1 and after.revision == rec.revision + 1
    stored = await a.list_chunks(rec.id)
    assert after.offset == stored[0].length and len(stored) == 1


async def test_concurrent_appends_from_two_instances_stay_contiguous(
        open_store: OpenStore, new_session: MakeSession) -> None:
    """Two writers that each retry at the offset they are told: every chunk lands once."""
    a, b = await open_store(), await open_store()
    rec = await a.create_session(new_session())

    async def writer(store: MetadataStore, tag: int) -> int:
        wins = 0
        for _ in range(6):
            cur = await store.get_session(rec.id)
            batch = [ChunkRecord(index=cur.chunk_count, offset=cur.offset, length=7,
                                 sealed_length=9, leaf_hash=bytes([tag]) * 32, compressed=False)]
            try:
                await store.commit_chunks(rec.id, expected_offset=cur.offset, chunks=batch)
                wins += 1
            except (OffsetMismatch, Conflict, ChunkCommitted):
                pass
        return wins

    wins = await asyncio.gather(writer(a, 1), writer(b, 2))
    after = await a.get_session(rec.id)
    stored = await b.list_chunks(rec.id)
    assert after.chunk_count == sum(wins) == len(stored)
    assert [c.index for c in stored] == list(range(len(stored)))
    assert [c.offset for c in stored] == [7 * i for i in range(len(stored))]
    assert after.offset == 7 * len(stored)


# -- the state machine: every pair, allowed and refused ----------------------------------------

_PATHS = {
    SessionState.RECORDING: [],
    SessionState.FINALIZING: [SessionState.FINALIZING],
    SessionState.FAILED: [SessionState.FAILED],
    SessionState.DELETED: [SessionState.DELETED],
}


async def _in_state(meta: MetadataStore, new: NewSession, state: SessionState) -> str:
    rec = await meta.create_session(new)
    if state is SessionState.COMPLETED:
        await meta.transition(rec.id, to=FINALIZING)
        await meta.finalize(rec.id, root_hash=b"\x01" * 32, checkpoint="cp\n", manifest=b"{}")
    for step in _PATHS.get(state, []):
        await meta.transition(rec.id, to=step)
    return rec.id


@pytest.mark.parametrize("source", list(SessionState), ids=str)
async def test_every_transition_is_allowed_or_refused(meta: MetadataStore,
                                                      new_session: MakeSession,
                                                      source: SessionState) -> None:
    for target in SessionState:
        sid = await _in_state(meta, new_session(), source)
        assert (await meta.get_session(sid)).state is source
        if target in TRANSITIONS[source]:
            moved = await meta.transition(sid, to=target, allowed_from=[source])
            assert moved.state is target and moved == await meta.get_session(sid)
            assert (moved.wrapped_key is None) == (target is SessionState.DELETED)
        else:
            before = await meta.get_session(sid)
            with pytest.raises(InvalidState) as info:
                await meta.transition(sid, to=target)
            assert info.value.extra == {"state": source.value}
            assert await meta.get_session(sid) == before


async def test_transition_compare_and_set_from(meta: MetadataStore,
                                               new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    with pytest.raises(InvalidState):
        await meta.transition(rec.id, to=SessionState.FAILED, allowed_from=[FINALIZING])
    assert (await meta.get_session(rec.id)).state is RECORDING


async def test_concurrent_transitions_have_one_winner(open_store: OpenStore,
                                                      new_session: MakeSession) -> None:
    a, b = await open_store(), await open_store()
    rec = await a.create_session(new_session())

    async def move(store: MetadataStore) -> bool:
        try:
            await store.transition(rec.id, to=FINALIZING, allowed_from=[RECORDING])
            return True
        except InvalidState:
            return False

    results = await asyncio.gather(*(move(s) for s in (a, b, a, b, a, b)))
    assert results.count(True) == 1


# -- listing: filters, order, cursors ------------------------------------------------------------


async def test_list_cursor_with_filters_walks_every_match_once(
        meta: MetadataStore, new_session: MakeSession) -> None:
    made = []
    for i in range(9):
        rec = await meta.create_session(new_session(labels={"host": f"h{i % 3}", "env": "x"}))
        made.append(rec)
        if i % 2:
            await meta.transition(rec.id, to=SessionState.FAILED)
    want = [r.id for r in reversed(made) if r.labels["host"] != "h1"]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        # host filter via two labels on one key is impossible; filter h0 and h2 separately
        items, cursor = await meta.list_sessions(labels=[("env", "x")], cursor=cursor, limit=2)
        seen += [r.id for r in items if r.labels["host"] != "h1"]
        if cursor is None:
            break
    assert seen == want
    failed, cur = await meta.list_sessions(state=SessionState.FAILED, labels=[("host", "h0")])
    assert [r.id for r in failed] == [r.id for r in reversed(made)
                                      if r.labels["host"] == "h0" and made.index(r) % 2]
    assert cur is None
    page, cur = await meta.list_sessions(state=RECORDING, limit=1)
    assert [r.id for r in page] == [made[8].id] and cur == made[8].id
    page, cur = await meta.list_sessions(state=RECORDING, limit=1, cursor=cur)
    assert [r.id for r in page] == [made[6].id]
    with pytest.raises(InvalidParameter):
        await meta.list_sessions(limit=0)


async def test_list_label_values_keep_their_text(meta: MetadataStore,
                                                 new_session: MakeSession) -> None:
    odd = {"path": "a=b:c d/é", "empty": ""}
    rec = await meta.create_session(new_session(labels=odd))
    items, _ = await meta.list_sessions(labels=[("path", "a=b:c d/é")])
    assert [r.id for r in items] == [rec.id] and items[0].labels == odd
    assert (await meta.list_sessions(labels=[("path", "a")]))[0] == []


# -- deletion, crypto-erasure, rewrapping, upload length ---------------------------------------


async def test_erase_drops_the_key_and_keeps_the_chunk_records(
        meta: MetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 5))
    gone = await meta.erase(rec.id)
    assert (gone.state, gone.wrapped_key, gone.offset) == (SessionState.DELETED, None, 5)
    assert await meta.get_session(rec.id) == gone
    with pytest.raises(InvalidState):
        await meta.replace_wrapped_key(rec.id, expected_key_id="master-1",
                                       wrapped=WrappedKey("master-2", b"\x09" * 60))
    with pytest.raises(InvalidState):
        await meta.commit_chunks(rec.id, expected_offset=5, chunks=chunks(1, 5, 5))


async def test_rewrap_is_a_compare_and_set(meta: MetadataStore,
                                           new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    new_key = WrappedKey("master-2", b"\x0a" * 60)
    done = await meta.replace_wrapped_key(rec.id, expected_key_id="master-1", wrapped=new_key)
    assert done.wrapped_key == new_key == (await meta.get_session(rec.id)).wrapped_key
    with pytest.raises(Conflict) as info:
        await meta.replace_wrapped_key(rec.id, expected_key_id="master-1",
                                       wrapped=WrappedKey("master-3", b"\x0b" * 60))
    assert info.value.extra == {"key_id": "master-2"}
    assert (await meta.get_session(rec.id)).wrapped_key == new_key


async def test_concurrent_rewraps_have_one_winner(open_store: OpenStore,
                                                  new_session: MakeSession) -> None:
    a, b = await open_store(), await open_store()
    rec = await a.create_session(new_session())

    async def rewrap(store: MetadataStore, n: int) -> WrappedKey | None:
        key = WrappedKey(f"master-{n}", bytes([n]) * 60)
        try:
            await store.replace_wrapped_key(rec.id, expected_key_id="master-1", wrapped=key)
            return key
        except Conflict:
            return None

    results = await asyncio.gather(*(rewrap(s, n) for n, s in
                                     zip(range(2, 10), itertools.cycle((a, b)))))
    winners = [k for k in results if k is not None]
    assert len(winners) == 1
    assert (await b.get_session(rec.id)).wrapped_key == winners[0]


async def test_upload_length_is_set_once(meta: MetadataStore, new_session: MakeSession) -> None:
    fixed = await meta.create_session(new_session(upload_length=15))
    assert fixed.upload_length == 15 == (await meta.get_session(fixed.id)).upload_length
    with pytest.raises(PayloadTooLarge):  # a commit past the declared length
        await meta.commit_chunks(fixed.id, expected_offset=0, chunks=chunks(0, 0, 10, 10))
    deferred = await meta.create_session(new_session())
    assert deferred.upload_length is None
    await meta.commit_chunks(deferred.id, expected_offset=0, chunks=chunks(0, 0, 10))
    with pytest.raises(Conflict):
        await meta.set_upload_length(deferred.id, 5)  # less than is committed
    with pytest.raises(InvalidParameter):
        await meta.set_upload_length(deferred.id, -1)
    assert (await meta.set_upload_length(deferred.id, 50)).upload_length == 50
    assert (await meta.set_upload_length(deferred.id, 50)).upload_length == 50
    with pytest.raises(Conflict):
        await meta.set_upload_length(deferred.id, 60)
    assert (await meta.get_session(deferred.id)).upload_length == 50
    failed = await meta.create_session(new_session())
    await meta.transition(failed.id, to=SessionState.FAILED)
    with pytest.raises(InvalidState):
        await meta.set_upload_length(failed.id, 10)


async def test_a_kept_checkpoint_until_finalize_replaces_it(meta: MetadataStore,
                                                            new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    assert await meta.get_checkpoint(rec.id) is None
    await meta.set_checkpoint(rec.id, "cp-1\n")
    await meta.set_checkpoint(rec.id, "cp-2\n")
    assert await meta.get_checkpoint(rec.id) == "cp-2\n"
    after = await meta.get_session(rec.id)
    assert after.updated_at == rec.updated_at and after.state is RECORDING
    await meta.transition(rec.id, to=FINALIZING)
    await meta.finalize(rec.id, root_hash=b"\x02" * 32, checkpoint="final\n", manifest=b"{}")
    assert await meta.get_checkpoint(rec.id) == "final\n"
    with pytest.raises(InvalidState):
        await meta.set_checkpoint(rec.id, "late\n")
    with pytest.raises(SessionNotFound):
        await meta.get_checkpoint(new_session().id)
