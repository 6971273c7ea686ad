"""SqliteMetadataStore: records, listing, the state machine, atomic commits, crypto-erasure."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sessions.common.errors import (
    BadRequest,
    Conflict,
    InvalidId,
    InvalidParameter,
    InvalidState,
    NotFound,
    OffsetMismatch,
    SessionNotFound,
)
from sessions.common.secrets import ConfigError
from sessions.common.states import SessionState
from sessions.storage import _sql
from sessions.storage.errors import StorageUnavailable
from sessions.storage.metastore import SqliteMetadataStore
from sessions.storage.records import ChunkRecord, NewSession

pytestmark = pytest.mark.anyio
MakeSession = Callable[..., NewSession]
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


async def test_create_and_get_round_trip(meta: SqliteMetadataStore,
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


async def test_create_duplicate_is_conflict(meta: SqliteMetadataStore,
                                            new_session: MakeSession) -> None:
    new = new_session()
    await meta.create_session(new)
    with pytest.raises(Conflict):
        await meta.create_session(new)


async def test_create_rejects_malformed_id(meta: SqliteMetadataStore,
                                           new_session: MakeSession) -> None:
    with pytest.raises(InvalidId):
        await meta.create_session(new_session(id="../etc/passwd"))


async def test_get_unknown_session(meta: SqliteMetadataStore, new_session: MakeSession) -> None:
    with pytest.raises(SessionNotFound):
        await meta.get_session(new_session().id)


async def test_list_newest_first_with_filters(meta: SqliteMetadataStore,
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


async def test_list_pages_are_stable(meta: SqliteMetadataStore, new_session: MakeSession) -> None:
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


async def test_list_rejects_malformed_cursor(meta: SqliteMetadataStore) -> None:
    with pytest.raises(InvalidId):
        await meta.list_sessions(cursor="x' OR 1=1 --")


async def test_transition_follows_the_state_machine(meta: SqliteMetadataStore,
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


async def test_transition_to_deleted_drops_the_key(meta: SqliteMetadataStore,
                                                   new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    gone = await meta.transition(rec.id, to=SessionState.DELETED)
    assert gone.state is SessionState.DELETED and gone.wrapped_key is None


async def test_commit_advances_the_session(meta: SqliteMetadataStore,
                                           new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    after = await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 100, 50))
    assert (after.offset, after.chunk_count, after.sealed_bytes) == (150, 2, 230)
    after = await meta.commit_chunks(rec.id, expected_offset=150, chunks=chunks(2, 150, 7))
    assert (after.offset, after.chunk_count, after.sealed_bytes) == (157, 3, 277)
    listed = await meta.list_chunks(rec.id)
    assert listed == chunks(0, 0, 100, 50) + chunks(2, 150, 7)
    assert await meta.list_chunks(rec.id, start=1, limit=1) == chunks(0, 0, 100, 50)[1:]


async def test_commit_offset_mismatch_reports_the_offset(meta: SqliteMetadataStore,
                                                         new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10))
    with pytest.raises(OffsetMismatch) as info:
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10))
    assert info.value.extra == {"offset": 10}


@pytest.mark.parametrize("bad", [
    pytest.param(chunks(1, 0, 10), id="index-skips"),
    pytest.param(chunks(0, 5, 10), id="offset-gap"),
    pytest.param(chunks(0, 0, 10) + chunks(2, 10, 10), id="index-gap-inside"),
    pytest.param(chunks(0, 0, 10) + chunks(1, 11, 10), id="offset-gap-inside"),
])
async def test_commit_rejects_non_contiguous_chunks(meta: SqliteMetadataStore,
                                                    new_session: MakeSession,
                                                    bad: list[ChunkRecord]) -> None:
    rec = await meta.create_session(new_session())
    with pytest.raises(Conflict):
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=bad)
    assert await meta.get_session(rec.id) == rec
    assert await meta.list_chunks(rec.id) == []


async def test_commit_rejects_bad_leaf_hash_length(meta: SqliteMetadataStore,
                                                   new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    bad = ChunkRecord(index=0, offset=0, length=1, sealed_length=2, leaf_hash=b"x",
                      compressed=False)
    with pytest.raises(BadRequest):
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=[bad])


async def test_commit_needs_recording(meta: SqliteMetadataStore,
                                      new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.transition(rec.id, to=FINALIZING)
    with pytest.raises(InvalidState):
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10))


async def test_failing_commit_changes_nothing(meta: SqliteMetadataStore,
                                              new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    # A stray row makes the second INSERT fail after the first one succeeded.
    stray = (rec.id, 1, 999, 1, 1, b"\xee" * 32, 0)
    await meta._call(lambda: meta._conn().execute(_sql.INSERT_CHUNK, stray))
    with pytest.raises(StorageUnavailable) as info:
        await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 10, 10))
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert await meta.get_session(rec.id) == rec
    assert [c.index for c in await meta.list_chunks(rec.id)] == [1]


async def test_leaf_hashes(meta: SqliteMetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    assert await meta.leaf_hashes(rec.id) == b""
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=chunks(0, 0, 1, 2, 3))
    assert await meta.leaf_hashes(rec.id) == b"\x00" * 32 + b"\x01" * 32 + b"\x02" * 32
    assert await meta.leaf_hashes(rec.id, size=2) == b"\x00" * 32 + b"\x01" * 32
    assert await meta.leaf_hashes(rec.id, size=0) == b""
    with pytest.raises(InvalidParameter) as info:
        await meta.leaf_hashes(rec.id, size=4)
    assert info.value.extra == {"chunk_count": 3}


async def test_finalize_and_manifest(meta: SqliteMetadataStore,
                                     new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    root = b"\xab" * 32
    with pytest.raises(InvalidState):
        await meta.finalize(rec.id, root_hash=root, checkpoint="cp\n", manifest=b"{}")
    with pytest.raises(NotFound):
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


async def test_erase_is_idempotent(meta: SqliteMetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    first = await meta.erase(rec.id)
    assert first.state is SessionState.DELETED and first.wrapped_key is None
    assert await meta.erase(rec.id) == first
    with pytest.raises(SessionNotFound):
        await meta.erase(new_session().id)
    with pytest.raises(InvalidState):
        await meta.transition(rec.id, to=RECORDING)


async def test_erased_key_leaves_no_copy_on_disk(tmp_path: Path,
                                                 new_session: MakeSession) -> None:
    from sessions.storage.records import WrappedKey

    path = tmp_path / "erase" / "metadata.sqlite3"
    store = await SqliteMetadataStore.open(path)
    blob = os.urandom(48)
    rec = await store.create_session(new_session(wrapped_key=WrappedKey("k", blob)))
    await store.erase(rec.id)
    await store.close()
    for f in path.parent.iterdir():
        assert blob not in f.read_bytes(), f.name


async def test_count_by_state(meta: SqliteMetadataStore, new_session: MakeSession) -> None:
    a = await meta.create_session(new_session())
    await meta.create_session(new_session())
    await meta.erase(a.id)
    counts = await meta.count_by_state()
    assert counts == {"recording": 1, "finalizing": 0, "completed": 0, "failed": 0,
                      "deleted": 1}


async def test_schema_is_versioned(tmp_path: Path, new_session: MakeSession) -> None:
    path = tmp_path / "v" / "metadata.sqlite3"
    store = await SqliteMetadataStore.open(path)
    rec = await store.create_session(new_session())
    await store.close()
    assert path.stat().st_mode & 0o077 == 0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = await SqliteMetadataStore.open(path)
    assert (await reopened.get_session(rec.id)).id == rec.id
    await reopened.close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {_sql.SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError):
        await SqliteMetadataStore.open(path)


async def test_ping_and_close(tmp_path: Path) -> None:
    store = await SqliteMetadataStore.open(tmp_path / "p" / "metadata.sqlite3")
    await store.ping()
    await store.close()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.ping()
