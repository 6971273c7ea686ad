"""Storage operations that touch both the metadata store and the chunk store.

A committed chunk is immutable.  A PUT re-checks, under the session's lock,
that its index is still uncommitted right before the rename, and a commit holds
the same lock from checking the staged files to its metadata transaction, so a
PUT can never replace a chunk that a commit just made visible.  The locks guard
this process's chunk directory only; the metadata itself is kept consistent by
its database's compare-and-set (see `metastore`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from weakref import WeakValueDictionary

from sessions.common.errors import ChunkNotFound, InvalidState
from sessions.common.states import SessionState, require_state
from sessions.common.web import Metrics
from sessions.storage.chunkstore import ChunkStore
from sessions.storage.errors import ChunkCommitted, ChunkNotStaged
from sessions.storage.metastore import MetadataStore
from sessions.storage.records import ChunkRecord, SessionRecord, check_commit


class StorageService:
    """The chunk life cycle: stage, commit, read, erase."""

    def __init__(self, meta: MetadataStore, chunks: ChunkStore, *, max_chunk_bytes: int,
                 metrics: Metrics | None = None) -> None:
        self.meta = meta
        self.chunks = chunks
        self.max_chunk_bytes = max_chunk_bytes
        self._metrics = metrics
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock

    async def put_chunk(self, session_id: str, index: int, body: AsyncIterable[bytes], *,
                        leaf_hash: bytes, content_length: int | None) -> int:
        """Stage chunk `index` of a recording session; return its sealed length.

        Preconditions: state == recording; index >= chunk_count (else 409 chunk_committed);
        the body hashes to leaf_hash and is at most max_chunk_bytes long.
        """
        _check_writable(await self.meta.get_session(session_id), index)
        size = await self.chunks.put(
            session_id, index, body, expected_leaf_hash=leaf_hash,
            max_bytes=self.max_chunk_bytes, expected_length=content_length,
            guard=lambda: self._still_writable(session_id, index))
        if self._metrics is not None:
            self._metrics.bytes_in.labels(self._metrics.service, "sealed").inc(size)
            self._metrics.chunks_in.labels(self._metrics.service).inc()
        return size

    @asynccontextmanager
    async def _still_writable(self, session_id: str, index: int) -> AsyncIterator[None]:
        async with self._lock(session_id):
            _check_writable(await self.meta.get_session(session_id), index)
            yield

    async def commit(self, session_id: str, *, expected_offset: int,
                     chunks: Sequence[ChunkRecord]) -> SessionRecord:
        """Make staged chunks visible: check them against the record and the files, then append.

        Preconditions: those of `check_commit`, and a staged file of exactly
        sealed_length bytes for every chunk.
        """
        async with self._lock(session_id):
            rec = await self.meta.get_session(session_id)
            fresh = [c for c in chunks if c.index >= rec.chunk_count]
            if len(fresh) == len(chunks):  # else the metadata store judges a repeated commit
                check_commit(rec, expected_offset=expected_offset, chunks=chunks)
            for chunk in fresh:
                if await self.chunks.size(session_id, chunk.index) != chunk.sealed_length:
                    raise ChunkNotStaged(f"chunk {chunk.index} is not staged with "
                                         f"{chunk.sealed_length} bytes",
                                         extra={"index": chunk.index})
            return await self.meta.commit_chunks(session_id, expected_offset=expected_offset,
                                                 chunks=chunks)

    async def read_chunk(self, session_id: str, index: int) -> bytes:
        """Return the stored bytes of committed chunk `index` (index < chunk_count)."""
        rec = await self.meta.get_session(session_id)
        if rec.state is SessionState.DELETED:
            raise InvalidState("the session was deleted; its chunks are gone",
                               extra={"state": rec.state.value})
        if index >= rec.chunk_count:
            raise ChunkNotFound(f"chunk {index} is not committed",
                                extra={"chunk_count": rec.chunk_count})
        try:
            data = await self.chunks.get(session_id, index)
        except ChunkNotFound:
            raise ChunkNotFound(f"chunk {index} is committed but its file is missing",
                                extra={"missing": True}) from None
        if self._metrics is not None:
            self._metrics.bytes_out.labels(self._metrics.service, "sealed").inc(len(data))
            self._metrics.chunks_out.labels(self._metrics.service).inc()
        return data

    async def delete(self, session_id: str) -> None:
        """Crypto-erase a session, then remove its chunk files; a second call does it again."""
        async with self._lock(session_id):
            # The erase is committed before any file goes: once the wrapped key is gone
            # the chunks are unreadable, whatever happens to the files afterwards.
            await self.meta.erase(session_id)
            await self.chunks.delete_session(session_id)


def _check_writable(rec: SessionRecord, index: int) -> None:
    require_state(rec.state, SessionState.RECORDING, action="write chunks to")
    if index < rec.chunk_count:
        raise ChunkCommitted(f"chunk {index} is committed and immutable",
                             extra={"chunk_count": rec.chunk_count})
