"""The SQLite metadata backend: one file, one connection, one worker thread.

Every call runs a whole function (and so a whole transaction) on the worker
thread, which keeps blocking I/O off the event loop.  Writes run inside
`BEGIN IMMEDIATE`, so two processes on one file serialise in SQLite, and the
compare-and-set (`WHERE revision = ?`) settles who won.  Acknowledged means
durable: WAL with `synchronous=FULL`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sessions.common.states import SessionState
from sessions.core import AuditEntry
from sessions.storage import _sql
from sessions.storage.errors import StorageUnavailable
from sessions.storage.records import (
    ChunkRecord,
    Finalized,
    SessionRecord,
    TokenRecord,
    Update,
    WrappedKey,
)

T = TypeVar("T")
Label = tuple[str, str]


class SqliteBackend:
    """`MetadataBackend` on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lucid-metastore")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the worker thread; the one place sqlite3 errors become service errors."""
        if self._closed:
            raise StorageUnavailable("the metadata store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StorageUnavailable() from exc

    async def prepare(self) -> None:
        if self._db is None:
            await self._call(self._connect)

    async def insert_session(self, rec: SessionRecord) -> bool:
        return await self._call(self._insert, rec)

    async def load_session(self, session_id: str) -> SessionRecord | None:
        return await self._call(self._load, session_id)

    async def apply(self, update: Update) -> bool:
        return await self._call(self._apply, update)

    async def list_sessions(self, *, state: SessionState | None, labels: Sequence[Label],
                            cursor: str | None, limit: int) -> list[SessionRecord]:
        return await self._call(self._list, state, tuple(labels), cursor, limit)

    async def list_chunks(self, session_id: str, *, start: int, stop: int,
                          limit: int) -> list[ChunkRecord]:
        rows = await self._call(self._rows, _sql.SELECT_CHUNKS, (session_id, start, stop, limit))
        return [ChunkRecord(index=r[0], offset=r[1], length=r[2], sealed_length=r[3],
                            leaf_hash=bytes(r[4]), compressed=bool(r[5])) for r in rows]

    async def leaf_hashes(self, session_id: str, *, count: int) -> bytes:
        rows = await self._call(self._rows, _sql.SELECT_LEAVES, (session_id, count))
        return b"".join(bytes(r[0]) for r in rows)

    async def load_finalized(self, session_id: str) -> Finalized | None:
        rows = await self._call(self._rows, _sql.SELECT_FINALIZED, (session_id,))
        if not rows or rows[0][1] is None:
            return None
        return Finalized(checkpoint=rows[0][0], manifest=bytes(rows[0][1]))

    async def load_checkpoint(self, session_id: str) -> str | None:
        rows = await self._call(self._rows, _sql.SELECT_CHECKPOINT, (session_id,))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    async def count_by_state(self) -> dict[str, int]:
        return dict(await self._call(self._rows, _sql.COUNT_BY_STATE, ()))

    async def insert_token(self, rec: TokenRecord) -> bool:
        return await self._call(self._write, _sql.INSERT_TOKEN, (
            rec.id, rec.name, rec.role, rec.secret_hash, rec.created_at, rec.expires_at,
            rec.revoked_at, rec.created_by))

    async def load_token(self, token_id: str) -> TokenRecord | None:
        rows = await self._call(self._rows, _sql.SELECT_TOKEN, (token_id,))
        return _token(rows[0]) if rows else None

    async def list_tokens(self) -> list[TokenRecord]:
        return [_token(r) for r in await self._call(self._rows, _sql.SELECT_TOKENS, ())]

    async def revoke_token(self, token_id: str, *, at: str) -> bool:
        return await self._call(self._write, _sql.REVOKE_TOKEN, (at, token_id))
    async def list_expired(self, *, before: str, limit: int) -> list[SessionRecord]:
        return await self._call(self._records, _sql.SELECT_EXPIRED, (before, limit))

    async def list_idle(self, *, state: SessionState, before: str,
                        limit: int) -> list[SessionRecord]:
        return await self._call(self._records, _sql.SELECT_IDLE, (state.value, before, limit))

    async def key_usage(self) -> dict[str, int]:
        return {str(k): int(n) for k, n in await self._call(self._rows, _sql.KEY_USAGE, ())}

    async def ping(self) -> None:
        await self._call(self._rows, "SELECT 1", ())

    async def append_audit(self, entry: AuditEntry, checkpoint: str) -> bool:
        return await self._call(self._append_audit, entry, checkpoint)

    async def list_audit(self, *, start: int, session_id: str | None,
                         limit: int) -> list[AuditEntry]:
        if session_id is None:
            rows = await self._call(self._rows, _sql.SELECT_AUDIT, (start, limit))
        else:
            rows = await self._call(self._rows, _sql.SELECT_AUDIT_OF_SESSION,
                                    (session_id, start, limit))
        return [_audit_entry(r) for r in rows]

    async def last_audit(self) -> AuditEntry | None:
        rows = await self._call(self._rows, _sql.SELECT_LAST_AUDIT, ())
        return _audit_entry(rows[0]) if rows else None

    async def load_audit_checkpoint(self) -> tuple[int, str] | None:
        rows = await self._call(self._rows, _sql.SELECT_AUDIT_CHECKPOINT, ())
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file 0600 first: SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0,
                             check_same_thread=False)
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

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    def _write(self, sql: str, params: tuple[Any, ...]) -> bool:
        """Run one write statement in a transaction; return whether it changed a row."""
        with self._tx() as db:
            return db.execute(sql, params).rowcount == 1

    def _load(self, session_id: str) -> SessionRecord | None:
        db = self._conn()
        row = db.execute(_sql.SELECT_SESSION_BY_ID, (session_id,)).fetchone()
        return None if row is None else _record(row, _labels_of(db, [session_id]).get(session_id))

    def _insert(self, rec: SessionRecord) -> bool:
        key = rec.wrapped_key
        with self._tx() as db:
            cur = db.execute(_sql.INSERT_SESSION, (
                rec.id, rec.state.value, rec.created_at, rec.updated_at, rec.retention_days,
                rec.chunk_size, rec.zstd_level, rec.format_version,
                None if key is None else key.key_id, None if key is None else key.blob,
                rec.upload_length, rec.revision, rec.owner, int(rec.legal_hold), rec.expires_at))
            if cur.rowcount != 1:
                return False
            db.executemany(_sql.INSERT_LABEL, [(rec.id, k, v) for k, v in rec.labels.items()])
            return True

    def _apply(self, update: Update) -> bool:
        rec, key = update.session, update.session.wrapped_key
        with self._tx() as db:
            cur = db.execute(_sql.UPDATE_SESSION, (
                rec.state.value, rec.updated_at, rec.offset, rec.chunk_count, rec.sealed_bytes,
                rec.root_hash, None if key is None else key.key_id,
                None if key is None else key.blob, rec.upload_length, rec.revision,
                int(rec.legal_hold), rec.expires_at, rec.lease_token, rec.lease_holder,
                rec.lease_expires, rec.id, rec.revision - 1))
            if cur.rowcount != 1:
                return False
            db.executemany(_sql.INSERT_CHUNK, [
                (rec.id, c.index, c.offset, c.length, c.sealed_length, c.leaf_hash,
                 int(c.compressed)) for c in update.chunks])
            if update.finalized is not None:
                db.execute(_sql.SET_FINALIZED, (update.finalized.checkpoint,
                                                update.finalized.manifest, rec.id))
            if update.checkpoint is not None:
                db.execute(_sql.SET_CHECKPOINT, (update.checkpoint, rec.id))
        if update.forget_key:
            _sql.truncate_wal(db)  # an old wrapped key must not linger in the write-ahead log
        return True

    def _records(self, sql: str, params: tuple[Any, ...]) -> list[SessionRecord]:
        db = self._conn()
        rows = db.execute(sql, params).fetchall()
        label_map = _labels_of(db, [row[0] for row in rows])
        return [_record(row, label_map.get(row[0])) for row in rows]

    def _append_audit(self, entry: AuditEntry, checkpoint: str) -> bool:
        with self._tx() as db:
            cur = db.execute(_sql.INSERT_AUDIT, (entry.seq, entry.at, entry.action, entry.actor,
                                                 entry.client, entry.session_id, entry.detail,
                                                 entry.prev))
            if cur.rowcount != 1:
                return False
            db.execute(_sql.SET_AUDIT_HEAD, (entry.seq + 1, checkpoint))
            return True

    def _list(self, state: SessionState | None, labels: tuple[Label, ...], cursor: str | None,
              limit: int) -> list[SessionRecord]:
        db = self._conn()
        sql, params = _sql.list_sessions_query(
            state=None if state is None else state.value, labels=labels, cursor=cursor)
        rows = db.execute(sql, (*params, limit)).fetchall()
        label_map = _labels_of(db, [row[0] for row in rows])
        return [_record(row, label_map.get(row[0])) for row in rows]


def _labels_of(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Return the labels of each of ids (at most a page of them)."""
    out: dict[str, dict[str, str]] = {}
    if not ids:
        return out
    for sid, key, value in db.execute(_sql.select_labels_query(len(ids)), tuple(ids)):
        out.setdefault(sid, {})[key] = value
    return out


def _record(row: Sequence[Any], labels: dict[str, str] | None) -> SessionRecord:
    (sid, state, created, updated, retention, offset, count, sealed, chunk_size, level,
     version, root, key_id, key_blob, upload_length, revision, owner, hold, expires,
     lease_token, lease_holder, lease_expires) = row
    key = None if key_id is None else WrappedKey(key_id=key_id, blob=bytes(key_blob))
    return SessionRecord(
        id=sid, state=SessionState(state), labels=labels or {}, created_at=created,
        updated_at=updated, retention_days=retention, offset=offset, chunk_count=count,
        sealed_bytes=sealed, chunk_size=chunk_size, zstd_level=level, format_version=version,
        root_hash=None if root is None else bytes(root), wrapped_key=key,
        upload_length=upload_length, revision=revision, owner=owner, legal_hold=bool(hold),
        expires_at=expires, lease_token=lease_token, lease_holder=lease_holder,
        lease_expires=lease_expires)


def _token(row: Sequence[Any]) -> TokenRecord:
    tid, name, role, digest, created, expires, revoked, created_by = row
    return TokenRecord(id=tid, name=name, role=role, secret_hash=bytes(digest),
                       created_at=created, expires_at=expires, revoked_at=revoked,
                       created_by=created_by)


def _audit_entry(row: Sequence[Any]) -> AuditEntry:
    seq, at, action, actor, client, session_id, detail, prev = row
    return AuditEntry(seq=seq, at=at, action=action, actor=actor, client=client,
                      session_id=session_id, detail=detail, prev=bytes(prev))
