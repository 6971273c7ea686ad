"""`upload_length` in storage: set at creation or declared once later, binding commits,
and the schema migration that added it (an old database stays readable)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessions.common.errors import Conflict, InvalidParameter, InvalidState, PayloadTooLarge
from sessions.common.states import SessionState
from sessions.storage import _sql
from sessions.storage.dburl import parse
from sessions.storage.metastore import MetadataStore, open_metastore
from sessions.storage.records import ChunkRecord, NewSession
from tests.storage.conftest import assert_error_body

pytestmark = pytest.mark.anyio
MakeSession = Callable[..., NewSession]


def chunk(index: int, offset: int, length: int) -> ChunkRecord:
    return ChunkRecord(index=index, offset=offset, length=length, sealed_length=length + 40,
                       leaf_hash=bytes([index]) * 32, compressed=False)


async def test_upload_length_is_set_at_creation_and_null_by_default(
        meta: MetadataStore, new_session: MakeSession) -> None:
    declared = await meta.create_session(new_session(upload_length=100))
    assert (await meta.get_session(declared.id)).upload_length == 100
    plain = await meta.create_session(new_session())
    assert (await meta.get_session(plain.id)).upload_length is None


async def test_a_deferred_length_is_declared_once(meta: MetadataStore,
                                                  new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=[chunk(0, 0, 10)])
    with pytest.raises(Conflict):
        await meta.set_upload_length(rec.id, 9)  # less than is committed
    assert (await meta.set_upload_length(rec.id, 30)).upload_length == 30
    assert (await meta.set_upload_length(rec.id, 30)).upload_length == 30  # same: no-op
    with pytest.raises(Conflict) as info:
        await meta.set_upload_length(rec.id, 31)
    assert info.value.extra == {"upload_length": 30}
    with pytest.raises(InvalidParameter):
        await meta.set_upload_length(rec.id, -1)


async def test_only_a_recording_session_takes_a_length(meta: MetadataStore,
                                                       new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session())
    await meta.transition(rec.id, to=SessionState.FAILED)
    with pytest.raises(InvalidState):
        await meta.set_upload_length(rec.id, 5)


async def test_a_commit_past_the_length_is_refused_and_changes_nothing(
        meta: MetadataStore, new_session: MakeSession) -> None:
    rec = await meta.create_session(new_session(upload_length=15))
    await meta.commit_chunks(rec.id, expected_offset=0, chunks=[chunk(0, 0, 10)])
    with pytest.raises(PayloadTooLarge):
        await meta.commit_chunks(rec.id, expected_offset=10, chunks=[chunk(1, 10, 6)])
    after = await meta.get_session(rec.id)
    assert (after.offset, after.chunk_count) == (10, 1)
    assert (await meta.commit_chunks(rec.id, expected_offset=10,
                                     chunks=[chunk(1, 10, 5)])).offset == 15


async def test_a_schema_1_database_is_migrated_and_its_sessions_stay_readable(
        tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _sql.MIGRATIONS[1]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO sessions (id, state, created_at, updated_at, retention_days, "
               "plain_offset, chunk_size, zstd_level, format_version, key_id, key_blob) "
               "VALUES ('01JDZ0Q3W6Y8E2V7K4N5P9R1ST', 'recording', '2025-01-01T00:00:00Z', "
               "'2025-01-01T00:00:00Z', NULL, 0, 1024, 3, 1, 'master-1', x'0102')")
    db.execute("INSERT INTO session_labels VALUES ('01JDZ0Q3W6Y8E2V7K4N5P9R1ST', 'user', 'al')")
    db.close()
    store = await open_metastore(parse(f"sqlite:///{path}"))
    try:
        old = await store.get_session("01JDZ0Q3W6Y8E2V7K4N5P9R1ST")
        assert old.upload_length is None and old.labels == {"user": "al"}
        assert old.wrapped_key is not None and old.wrapped_key.blob == b"\x01\x02"
        assert (await store.set_upload_length(old.id, 7)).upload_length == 7
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION == 7
    db.close()


async def test_the_http_endpoint_declares_the_length(
        client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]]) -> None:
    created = (await client.post("/internal/v1/sessions", json=session_body())).json()
    assert created["upload_length"] is None
    url = f"/internal/v1/sessions/{created['id']}/upload-length"
    resp = await client.put(url, json={"upload_length": 12})
    assert resp.status_code == 200 and resp.json()["upload_length"] == 12
    assert_error_body(await client.put(url, json={"upload_length": 13}), 409, "conflict")
    assert_error_body(await client.put(url, json={"upload_length": -1}), 422,
                      "invalid_parameter")
    body = session_body(upload_length=5)
    assert (await client.post("/internal/v1/sessions", json=body)).json()["upload_length"] == 5
