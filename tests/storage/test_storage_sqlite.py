"""The SQLite backend's own promises: atomic commits, no erased key left on disk, migrations."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sessions.common.secrets import ConfigError
from sessions.common.states import SessionState
from sessions.storage import _sql
from sessions.storage.dburl import parse
from sessions.storage.errors import StorageUnavailable
from sessions.storage.metastore import MetadataStore, open_metastore
from sessions.storage.records import ChunkRecord, NewSession, WrappedKey
from sessions.storage.sqlite_backend import SqliteBackend

pytestmark = pytest.mark.anyio
MakeSession = Callable[..., NewSession]


async def _open(path: Path) -> MetadataStore:
    return await open_metastore(parse(f"sqlite:///{path}"))


def _chunk(index: int, offset: int) -> ChunkRecord:
    return ChunkRecord(index=index, offset=offset, length=10, sealed_length=50,
                       leaf_hash=bytes([index]) * 32, compressed=False)


async def test_failing_commit_changes_nothing(tmp_path: Path, new_session: MakeSession) -> None:
    store = await _open(tmp_path / "m.sqlite3")
    backend = store.backend
    assert isinstance(backend, SqliteBackend)
    rec = await store.create_session(new_session())
    # A stray row makes the second INSERT fail after the first one succeeded.
    stray = (rec.id, 1, 999, 1, 1, b"\xee" * 32, 0)
    await backend._call(lambda: backend._conn().execute(_sql.INSERT_CHUNK, stray))
    with pytest.raises(StorageUnavailable) as info:
        await store.commit_chunks(rec.id, expected_offset=0, chunks=[_chunk(0, 0), _chunk(1, 10)])
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert await store.get_session(rec.id) == rec
    assert await backend.list_chunks(rec.id, start=0, stop=10, limit=10) == [
        ChunkRecord(index=1, offset=999, length=1, sealed_length=1, leaf_hash=b"\xee" * 32,
                    compressed=False)]
    await store.close()


@pytest.mark.parametrize("how", ["erase", "rewrap"])
async def test_an_old_key_leaves_no_copy_on_disk(tmp_path: Path, new_session: MakeSession,
                                                 how: str) -> None:
    path = tmp_path / "erase" / "metadata.sqlite3"
    store = await _open(path)
    blob = os.urandom(48)
    rec = await store.create_session(new_session(wrapped_key=WrappedKey("k", blob)))
    if how == "erase":
        await store.erase(rec.id)
    else:
        await store.replace_wrapped_key(rec.id, expected_key_id="k",
                                        wrapped=WrappedKey("k2", os.urandom(48)))
    await store.close()
    for f in path.parent.iterdir():
        assert blob not in f.read_bytes(), f.name


async def test_schema_is_versioned(tmp_path: Path, new_session: MakeSession) -> None:
    path = tmp_path / "v" / "metadata.sqlite3"
    store = await _open(path)
    rec = await store.create_session(new_session())
    await store.close()
    assert path.stat().st_mode & 0o077 == 0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION == 7
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = await _open(path)
    assert (await reopened.get_session(rec.id)).id == rec.id
    await reopened.close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {_sql.SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError):
        await _open(path)


@pytest.mark.parametrize("old", [1, 2, 3])
async def test_opens_a_database_of_a_previous_schema(tmp_path: Path, old: int) -> None:
    """A v1, v2 or v3 database (as earlier releases wrote it) is migrated and reads back whole."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for step in range(1, old + 1):
            for statement in _sql.MIGRATIONS[step]:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {old}")
        db.execute("INSERT INTO sessions (id, state, created_at, updated_at, retention_days, "
                   "plain_offset, chunk_count, sealed_bytes, chunk_size, zstd_level, "
                   "format_version, key_id, key_blob) VALUES (?, 'recording', ?, ?, 7, 10, 1, "
                   "50, 1024, 3, 1, 'master-1', ?)",
                   ("01HF7YAT00KA68J0FJ9R690X42", "2026-01-01T00:00:00.000000Z",
                    "2026-01-01T00:00:00.000000Z", b"\x01" * 60))
        db.execute("INSERT INTO chunks VALUES (?, 0, 0, 10, 50, ?, 1)",
                   ("01HF7YAT00KA68J0FJ9R690X42", b"\x05" * 32))
        db.execute("INSERT INTO session_labels VALUES (?, 'host', 'old')",
                   ("01HF7YAT00KA68J0FJ9R690X42",))
    store = await _open(path)
    rec = await store.get_session("01HF7YAT00KA68J0FJ9R690X42")
    assert (rec.state, rec.offset, rec.chunk_count, rec.labels) == (
        SessionState.RECORDING, 10, 1, {"host": "old"})
    assert (rec.upload_length, rec.revision, rec.owner) == (None, 1, None)
    assert await store.list_tokens() == []  # v4: the tokens table exists
    # v5 backfills the expiry the retention sweep asks for, in the form comparisons rely on
    assert (rec.expires_at, rec.legal_hold) == ("2026-01-08T00:00:00.000000Z", False)
    after = await store.commit_chunks(rec.id, expected_offset=10, chunks=[_chunk(1, 10)])
    assert (after.offset, after.revision) == (20, 2)
    assert len(await store.leaf_hashes(rec.id)) == 64
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION


async def test_ping_and_close(tmp_path: Path) -> None:
    store = await _open(tmp_path / "p" / "metadata.sqlite3")
    await store.ping()
    await store.close()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.ping()
