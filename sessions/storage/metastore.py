"""The metadata store: one small async interface, and its SQLite implementation.

`MetadataStore` is all the routes know, so a MongoDB store can drop in.
`SqliteMetadataStore` keeps ONE connection and uses it from ONE worker thread:
every call runs a whole function (and so a whole transaction) on that thread,
which makes each call atomic and keeps blocking I/O off the event loop.
Acknowledged means durable: WAL with `synchronous=FULL`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sessions.common.errors import (
    BadRequest,
    Conflict,
    InvalidParameter,
    InvalidState,
    NotFound,
    SessionNotFound,
)
from sessions.common.ids import check_session_id
from sessions.common.states import SessionState, check_transition, require_state
from sessions.storage import _sql
from sessions.storage.errors import StorageUnavailable
from sessions.storage.records import (
    LEAF_HASH_SIZE,
    ChunkRecord,
    NewSession,
    SessionRecord,
    WrappedKey,
    check_commit,
    check_upload_length,
)

T = TypeVar("T")
Label = tuple[str, str]


class MetadataStore(Protocol):
    """Session and chunk metadata; every method is atomic and raises `ServiceError`s only."""

    async def create_session(self, new: NewSession) -> SessionRecord: ...
    async def get_session(self, session_id: str) -> SessionRecord: ...
    async def list_sessions(self, *, state: SessionState | None = None,
                            labels: Sequence[Label] = (), cursor: str | None = None,
                            limit: int = 50) -> tuple[list[SessionRecord], str | None]: ...
    async def transition(self, session_id: str, *, to: SessionState,
                         allowed_from: Collection[SessionState] | None = None
                         ) -> SessionRecord: ...
    async def commit_chunks(self, session_id: str, *, expected_offset: int,
                            chunks: Sequence[ChunkRecord]) -> SessionRecord: ...
    async def list_chunks(self, session_id: str, *, start: int = 0,
                          limit: int = 1000) -> list[ChunkRecord]: ...
    async def leaf_hashes(self, session_id: str, *, size: int | None = None) -> bytes: ...
    async def finalize(self, session_id: str, *, root_hash: bytes, checkpoint: str,
                       manifest: bytes) -> SessionRecord: ...
    async def get_manifest(self, session_id: str) -> bytes: ...
    async def erase(self, session_id: str) -> SessionRecord: ...
    async def replace_wrapped_key(self, session_id: str, *, expected_key_id: str,
                                  wrapped: WrappedKey) -> SessionRecord: ...
    async def set_upload_length(self, session_id: str, length: int) -> SessionRecord: ...
    async def count_by_state(self) -> dict[str, int]: ...
    async def set_checkpoint(self, session_id: str, checkpoint: str) -> None: ...
    async def get_checkpoint(self, session_id: str) -> str | None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Return moment as an RFC 3339 UTC timestamp with microseconds and a `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SqliteMetadataStore:
    """`MetadataStore` on one SQLite file; build it with `await SqliteMetadataStore.open(path)`."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._path = path
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lucid-metastore")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *,
                   clock: Callable[[], datetime] = utc_now) -> SqliteMetadataStore:
        """Return a store on path, creating or migrating its schema."""
        store = cls(path, clock=clock)
        try:
            await store._call(store._connect)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        return store

    # -- the one boundary where sqlite3 errors become service errors --------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StorageUnavailable("the metadata store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StorageUnavailable() from exc

    # -- the async interface ---------------------------------------------------------------

    async def create_session(self, new: NewSession) -> SessionRecord:
        check_session_id(new.id)
        return await self._call(self._create, new)

    async def get_session(self, session_id: str) -> SessionRecord:
        return await self._call(self._get, session_id)

    async def list_sessions(self, *, state: SessionState | None = None,
                            labels: Sequence[Label] = (), cursor: str | None = None,
                            limit: int = 50) -> tuple[list[SessionRecord], str | None]:
        if cursor is not None:
            check_session_id(cursor)
        if limit < 1:
            raise InvalidParameter("limit must be at least 1")
        return await self._call(self._list, state, tuple(labels), cursor, limit)

    async def transition(self, session_id: str, *, to: SessionState,
                         allowed_from: Collection[SessionState] | None = None
                         ) -> SessionRecord:
        allowed = None if allowed_from is None else tuple(allowed_from)
        return await self._call(self._transition, session_id, to, allowed)

    async def commit_chunks(self, session_id: str, *, expected_offset: int,
                            chunks: Sequence[ChunkRecord]) -> SessionRecord:
        return await self._call(self._commit, session_id, expected_offset, tuple(chunks))

    async def list_chunks(self, session_id: str, *, start: int = 0,
                          limit: int = 1000) -> list[ChunkRecord]:
        if start < 0 or limit < 1:
            raise InvalidParameter("start must be >= 0 and limit >= 1")
        return await self._call(self._list_chunks, session_id, start, limit)

    async def leaf_hashes(self, session_id: str, *, size: int | None = None) -> bytes:
        if size is not None and size < 0:
            raise InvalidParameter("size must be >= 0")
        return await self._call(self._leaf_hashes, session_id, size)

    async def finalize(self, session_id: str, *, root_hash: bytes, checkpoint: str,
                       manifest: bytes) -> SessionRecord:
        if len(root_hash) != LEAF_HASH_SIZE:
            raise BadRequest("root_hash must be 32 bytes")
        return await self._call(self._finalize, session_id, root_hash, checkpoint, manifest)

    async def get_manifest(self, session_id: str) -> bytes:
        return await self._call(self._manifest, session_id)

    async def erase(self, session_id: str) -> SessionRecord:
        return await self._call(self._erase, session_id)

    async def replace_wrapped_key(self, session_id: str, *, expected_key_id: str,
                                  wrapped: WrappedKey) -> SessionRecord:
        """Swap a session's wrapped key (master key rotation), if it still has expected_key_id.

        Raises InvalidState if the key was erased, Conflict if another key id is stored.
        """
        return await self._call(self._replace_wrapped_key, session_id, expected_key_id, wrapped)

    async def set_upload_length(self, session_id: str, length: int) -> SessionRecord:
        """Declare a session's total length once (`check_upload_length`); return the record."""
        if length < 0:
            raise InvalidParameter("upload_length must be >= 0")
        return await self._call(self._set_upload_length, session_id, length)

    async def count_by_state(self) -> dict[str, int]:
        return await self._call(self._count_by_state)

    async def set_checkpoint(self, session_id: str, checkpoint: str) -> None:
        """Keep the processor's last signed checkpoint of a recording or finalizing session."""
        await self._call(self._set_checkpoint, session_id, checkpoint)

    async def get_checkpoint(self, session_id: str) -> str | None:
        """Return the last signed checkpoint kept for the session (the final one once completed)."""
        return await self._call(self._get_checkpoint, session_id)

    async def ping(self) -> None:
        await self._call(lambda: self._conn().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._call(self._disconnect)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    # -- everything below runs on the worker thread ---------------------------------------

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file 0600 first: SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
        try:
            for pragma in _sql.PRAGMAS:
                db.execute(pragma)
            _sql.migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageUnavailable("the metadata store is not open")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection inside BEGIN IMMEDIATE; commit on success, roll back otherwise."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _now(self) -> str:
        return rfc3339(self._clock())

    def _load(self, db: sqlite3.Connection, session_id: str) -> SessionRecord:
        row = db.execute(_sql.SELECT_SESSION_BY_ID, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound()
        return _record(row, _labels_of(db, [session_id]).get(session_id, {}))

    def _get(self, session_id: str) -> SessionRecord:
        return self._load(self._conn(), session_id)

    def _create(self, new: NewSession) -> SessionRecord:
        now = self._now()
        with self._tx() as db:
            if db.execute(_sql.SESSION_EXISTS, (new.id,)).fetchone() is not None:
                raise Conflict("a session with this id already exists")
            key = new.wrapped_key
            db.execute(_sql.INSERT_SESSION, (
                new.id, SessionState.RECORDING.value, now, now, new.retention_days,
                new.chunk_size, new.zstd_level, new.format_version, key.key_id, key.blob,
                new.upload_length))
            db.executemany(_sql.INSERT_LABEL, [(new.id, k, v) for k, v in new.labels.items()])
            return self._load(db, new.id)

    def _list(self, state: SessionState | None, labels: tuple[Label, ...], cursor: str | None,
              limit: int) -> tuple[list[SessionRecord], str | None]:
        db = self._conn()
        sql, params = _sql.list_sessions_query(
            state=None if state is None else state.value, labels=labels, cursor=cursor)
        rows = db.execute(sql, (*params, limit + 1)).fetchall()
        page = rows[:limit]
        label_map = _labels_of(db, [row[0] for row in page])
        records = [_record(row, label_map.get(row[0], {})) for row in page]
        next_cursor = records[-1].id if len(rows) > limit else None
        return records, next_cursor

    def _transition(self, session_id: str, to: SessionState,
                    allowed: tuple[SessionState, ...] | None) -> SessionRecord:
        with self._tx() as db:
            rec = self._load(db, session_id)
            if allowed is not None:
                require_state(rec.state, *allowed, action="change the state of")
            check_transition(rec.state, to)
            # Whatever path leads to `deleted`, the wrapped key goes with it.
            sql = _sql.ERASE if to is SessionState.DELETED else _sql.SET_STATE
            db.execute(sql, (to.value, self._now(), session_id))
            rec = self._load(db, session_id)
        if to is SessionState.DELETED:
            _sql.truncate_wal(db)
        return rec

    def _commit(self, session_id: str, expected_offset: int,
                chunks: tuple[ChunkRecord, ...]) -> SessionRecord:
        with self._tx() as db:
            rec = self._load(db, session_id)
            check_commit(rec, expected_offset=expected_offset, chunks=chunks)
            if not chunks:
                return rec
            db.executemany(_sql.INSERT_CHUNK, [
                (session_id, c.index, c.offset, c.length, c.sealed_length, c.leaf_hash,
                 int(c.compressed)) for c in chunks])
            db.execute(_sql.ADVANCE, (
                sum(c.length for c in chunks), len(chunks),
                sum(c.sealed_length for c in chunks), self._now(), session_id))
            return self._load(db, session_id)

    def _list_chunks(self, session_id: str, start: int, limit: int) -> list[ChunkRecord]:
        db = self._conn()
        self._load(db, session_id)
        rows = db.execute(_sql.SELECT_CHUNKS, (session_id, start, limit)).fetchall()
        return [ChunkRecord(index=r[0], offset=r[1], length=r[2], sealed_length=r[3],
                            leaf_hash=bytes(r[4]), compressed=bool(r[5])) for r in rows]

    def _leaf_hashes(self, session_id: str, size: int | None) -> bytes:
        db = self._conn()
        rec = self._load(db, session_id)
        if size is not None and size > rec.chunk_count:
            raise InvalidParameter(f"size {size} exceeds the {rec.chunk_count} committed chunks",
                                   extra={"chunk_count": rec.chunk_count})
        count = rec.chunk_count if size is None else size
        rows = db.execute(_sql.SELECT_LEAVES, (session_id, count)).fetchall()
        return b"".join(bytes(r[0]) for r in rows)

    def _finalize(self, session_id: str, root_hash: bytes, checkpoint: str,
                  manifest: bytes) -> SessionRecord:
        with self._tx() as db:
            rec = self._load(db, session_id)
            if rec.state is SessionState.COMPLETED:
                if rec.root_hash != root_hash:
                    raise Conflict("the session was completed with another root hash")
                return rec
            require_state(rec.state, SessionState.FINALIZING, action="finalize")
            db.execute(_sql.FINALIZE, (root_hash, checkpoint, manifest, self._now(), session_id))
            return self._load(db, session_id)

    def _manifest(self, session_id: str) -> bytes:
        row = self._conn().execute(_sql.SELECT_MANIFEST, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound()
        if row[0] is None:
            raise NotFound("the manifest exists once the session is completed")
        return bytes(row[0])

    def _erase(self, session_id: str) -> SessionRecord:
        with self._tx() as db:
            rec = self._load(db, session_id)
            if rec.state is SessionState.DELETED and rec.wrapped_key is None:
                return rec
            db.execute(_sql.ERASE, (SessionState.DELETED.value, self._now(), session_id))
            rec = self._load(db, session_id)
        _sql.truncate_wal(db)
        return rec

    def _replace_wrapped_key(self, session_id: str, expected_key_id: str,
                             wrapped: WrappedKey) -> SessionRecord:
        with self._tx() as db:
            rec = self._load(db, session_id)
            if rec.wrapped_key is None:
                raise InvalidState("the session's key was erased", extra={"state": rec.state.value})
            if rec.wrapped_key.key_id != expected_key_id:
                raise Conflict("the session's key is wrapped under another master key",
                               extra={"key_id": rec.wrapped_key.key_id})
            db.execute(_sql.REWRAP, (wrapped.key_id, wrapped.blob, self._now(), session_id,
                                     expected_key_id))
            rec = self._load(db, session_id)
        _sql.truncate_wal(db)  # the old wrapped key must not linger in the write-ahead log
        return rec

    def _set_checkpoint(self, session_id: str, checkpoint: str) -> None:
        with self._tx() as db:
            rec = self._load(db, session_id)
            require_state(rec.state, SessionState.RECORDING, SessionState.FINALIZING,
                          action="keep a checkpoint of")
            db.execute(_sql.SET_CHECKPOINT, (checkpoint, session_id))

    def _get_checkpoint(self, session_id: str) -> str | None:
        row = self._conn().execute(_sql.SELECT_CHECKPOINT, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound()
        return None if row[1] is None else str(row[1])

    def _set_upload_length(self, session_id: str, length: int) -> SessionRecord:
        with self._tx() as db:
            rec = self._load(db, session_id)
            if check_upload_length(rec, length):
                db.execute(_sql.SET_UPLOAD_LENGTH, (length, self._now(), session_id))
                rec = self._load(db, session_id)
            return rec

    def _count_by_state(self) -> dict[str, int]:
        counts = {state.value: 0 for state in SessionState}
        for state, n in self._conn().execute(_sql.COUNT_BY_STATE):
            counts[state] = n
        return counts


def _labels_of(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Return the labels of each of ids (at most a page of them)."""
    out: dict[str, dict[str, str]] = {}
    if not ids:
        return out
    for sid, key, value in db.execute(_sql.select_labels_query(len(ids)), tuple(ids)):
        out.setdefault(sid, {})[key] = value
    return out


def _record(row: Sequence[Any], labels: dict[str, str]) -> SessionRecord:
    (sid, state, created, updated, retention, offset, count, sealed, chunk_size, level,
     version, root, key_id, key_blob, upload_length) = row
    key = None if key_id is None else WrappedKey(key_id=key_id, blob=bytes(key_blob))
    return SessionRecord(
        id=sid, state=SessionState(state), labels=labels, created_at=created, updated_at=updated,
        retention_days=retention, offset=offset, chunk_count=count, sealed_bytes=sealed,
        chunk_size=chunk_size, zstd_level=level, format_version=version,
        root_hash=None if root is None else bytes(root), wrapped_key=key,
        upload_length=upload_length)
