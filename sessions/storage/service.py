"""Storage operations that touch both the metadata store and the chunk store.

A committed chunk is immutable.  A PUT re-checks, under the session's lock,
that its index is still uncommitted right before it publishes, and a commit holds
the same lock from checking the staged chunks to its metadata transaction, so a
PUT of this process can never replace a chunk that a commit just made visible.
The locks are per process; the metadata is kept consistent by its database's
compare-and-set (see `metastore`), and across storage processes (a shared S3 store)
a chunk is read and checked by the leaf hash its commit names, so a late PUT of
another process only adds an object nobody reads.

Staged chunks that are never committed do not stay: the processor discards them
when the request that staged them fails, a session leaving `recording` discards
them, and the orphan sweep (`sweep.py`) removes what a crash or a late PUT left.
A discard also fences off every PUT of this process already in flight for the
session (it may no longer publish).  On a shared store a discard of a recording
session removes only what is older than the grace: a commit running in another
process may be about to name what it would remove.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from weakref import WeakValueDictionary

from sessions.common.checksums import Checksum
from sessions.common.errors import ChunkNotFound, InsufficientStorage, InvalidState
from sessions.common.ranges import ByteRange, parse_one_range
from sessions.common.states import SessionState, require_state
from sessions.common.web import Metrics
from sessions.storage.chunkstore import ChunkStore, StoredChunk
from sessions.storage.errors import (
    ChunkCommitted,
    ChunkNotStaged,
    StagingDiscarded,
    StorageUnavailable,
)
from sessions.storage.metastore import MetadataStore, utc_now
from sessions.storage.records import ChunkRecord, SessionRecord, check_commit, check_lease

DEFAULT_GRACE_SECONDS = 3600.0


def _missing(index: int) -> ChunkNotFound:
    return ChunkNotFound(f"chunk {index} is committed but its file is missing",
                         extra={"missing": True})


class _Gate:
    """A session's lock, and how many discards it has seen (a PUT notes it when it starts)."""

    __slots__ = ("__weakref__", "discards", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.discards = 0


class StorageService:
    """The chunk life cycle: stage, commit, read, erase."""

    def __init__(self, meta: MetadataStore, chunks: ChunkStore, *, max_chunk_bytes: int,
                 metrics: Metrics | None = None, min_free_bytes: int = 0,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS,
                 clock: Callable[[], datetime] = utc_now) -> None:
        """grace_seconds > 0: how old a chunk no commit names must be before it is removed
        while other processes may be writing (sized well above the longest PUT)."""
        self.meta = meta
        self.chunks = chunks
        self.max_chunk_bytes = max_chunk_bytes
        self.min_free_bytes = min_free_bytes
        self.grace = timedelta(seconds=grace_seconds)
        self.clock = clock
        self._metrics = metrics
        self._gates: WeakValueDictionary[str, _Gate] = WeakValueDictionary()

    def _gate(self, session_id: str) -> _Gate:
        """Return the session's gate; callers keep a reference while they use its lock."""
        gate = self._gates.get(session_id)
        if gate is None:
            gate = self._gates[session_id] = _Gate()
        return gate

    @asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's lock of this process: no PUT of it publishes, and no commit,
        discard or delete of it runs here, meanwhile (other processes are not held)."""
        gate = self._gate(session_id)
        async with gate.lock:
            yield

    async def put_chunk(self, session_id: str, index: int, body: AsyncIterable[bytes], *,
                        leaf_hash: bytes, content_length: int | None,
                        lease_token: int | None = None,
                        checksum: Checksum | None = None) -> int:
        """Stage chunk `index` of a recording session; return its sealed length.

        Preconditions: state == recording; index >= chunk_count (else 409 chunk_committed);
        the lease admits lease_token (`check_lease`, else 409 lease_lost; checked again
        right before the file is published); the body passes `BodyCheck(leaf_hash,
        checksum)` and is at most max_chunk_bytes long.
        """
        gate = self._gate(session_id)
        discards = gate.discards
        _check_writable(await self.meta.get_session(session_id), index, lease_token)
        await self._check_free_space(content_length)
        try:
            size = await self.chunks.put(
                session_id, index, body, expected_leaf_hash=leaf_hash,
                max_bytes=self.max_chunk_bytes, expected_length=content_length,
                checksum=checksum, guard=lambda: self._still_writable(
                    gate, discards, session_id, index, lease_token))
        except StorageUnavailable:
            # A delete removes the session's directory while a PUT may still be creating its
            # temp file there: that PUT failed because of the delete (409), not the store.
            _check_writable(await self.meta.get_session(session_id), index, lease_token)
            raise
        if self._metrics is not None:
            self._metrics.bytes_in.labels(self._metrics.service, "sealed").inc(size)
            self._metrics.chunks_in.labels(self._metrics.service).inc()
        return size

    async def _check_free_space(self, content_length: int | None) -> None:
        """Raise InsufficientStorage (507) unless the chunk fits above the free-space watermark.

        Checked before a byte is written: a refused chunk leaves nothing behind, and
        what was committed before stays committed (the client resumes from its offset).
        """
        if self.min_free_bytes <= 0:
            return
        need = self.max_chunk_bytes if content_length is None else content_length
        free = await self.chunks.free_bytes()
        if free - need < self.min_free_bytes:
            raise InsufficientStorage(extra={"free_bytes": free,
                                             "min_free_bytes": self.min_free_bytes})

    @asynccontextmanager
    async def _still_writable(self, gate: _Gate, discards: int, session_id: str,
                              index: int, lease_token: int | None) -> AsyncIterator[None]:
        async with gate.lock:
            _check_writable(await self.meta.get_session(session_id), index, lease_token)
            if gate.discards != discards:
                raise StagingDiscarded(extra={"index": index})
            yield

    async def commit(self, session_id: str, *, expected_offset: int,
                     chunks: Sequence[ChunkRecord],
                     lease_token: int | None = None) -> SessionRecord:
        """Make staged chunks visible: check them against the record and the store, then append.

        Preconditions: the lease admits lease_token (`check_lease`, 409 lease_lost), those
        of `check_commit`, and for every chunk a staged chunk of its leaf hash with exactly
        sealed_length bytes, staged less than half the grace ago (else 409
        `chunk_not_staged`: the sweep removes chunks older than the grace, so one it may
        be removing is never committed).
        """
        gate = self._gate(session_id)
        async with gate.lock:
            rec = await self.meta.get_session(session_id)
            check_lease(rec, lease_token)
            fresh = [c for c in chunks if c.index >= rec.chunk_count]
            if len(fresh) == len(chunks):  # else the metadata store judges a repeated commit
                check_commit(rec, expected_offset=expected_offset, chunks=chunks)
            for chunk in fresh:
                await self._check_staged(session_id, chunk)
            return await self.meta.commit_chunks(session_id, expected_offset=expected_offset,
                                                 chunks=chunks, lease_token=lease_token)

    async def _check_staged(self, session_id: str, chunk: ChunkRecord) -> None:
        staged = await self.chunks.stat(session_id, chunk.index, leaf_hash=chunk.leaf_hash)
        if staged is None or staged.size != chunk.sealed_length:
            raise ChunkNotStaged(f"chunk {chunk.index} is not staged with "
                                 f"{chunk.sealed_length} bytes", extra={"index": chunk.index})
        if staged.modified < self.clock() - self.grace / 2:
            raise ChunkNotStaged(f"chunk {chunk.index} was staged too long ago; stage it again",
                                 extra={"index": chunk.index})

    async def stream_chunk(self, session_id: str, index: int
                           ) -> tuple[int, AsyncIterator[bytes]]:
        """Return the length and the stored bytes (in pieces, read as sent) of committed
        chunk `index` (index < chunk_count), the object its committed leaf hash names."""
        committed = await self._committed(session_id, index)
        try:
            size, pieces = await self.chunks.stream(session_id, index,
                                                    leaf_hash=committed.leaf_hash)
        except ChunkNotFound:
            raise _missing(index) from None
        self._count_out(size, chunks=1)
        return size, pieces

    async def stream_chunk_range(self, session_id: str, index: int, range_header: str
                                 ) -> tuple[int, ByteRange, AsyncIterator[bytes]]:
        """Return the stored length of committed chunk `index`, the one byte range of it
        `range_header` selects, and those bytes (in pieces, read as sent).

        InvalidRange (400) unless the header is one valid `bytes` range-spec,
        RangeNotSatisfiable (416, with `size`) if it selects none of the stored bytes
        (RFC 9110 §14.1.2, §15.5.17).
        """
        committed = await self._committed(session_id, index)
        stored = await self.chunks.stat(session_id, index, leaf_hash=committed.leaf_hash)
        if stored is None:
            raise _missing(index)
        rng = parse_one_range(range_header, size=stored.size)
        try:
            pieces = await self.chunks.stream_range(
                session_id, index, leaf_hash=committed.leaf_hash, size=stored.size,
                offset=rng.start, length=rng.end - rng.start)
        except ChunkNotFound:
            raise _missing(index) from None
        self._count_out(rng.end - rng.start, chunks=0)
        return stored.size, rng, pieces

    async def _committed(self, session_id: str, index: int) -> ChunkRecord:
        """Return the row of committed chunk `index`; raise unless committed and not erased."""
        rec = await self.meta.get_session(session_id)
        if rec.state is SessionState.DELETED:
            raise InvalidState("the session was deleted; its chunks are gone",
                               extra={"state": rec.state.value})
        if index >= rec.chunk_count:
            raise ChunkNotFound(f"chunk {index} is not committed",
                                extra={"chunk_count": rec.chunk_count})
        return await self.meta.committed_chunk(rec, index)

    def _count_out(self, size: int, *, chunks: int) -> None:
        if self._metrics is not None:
            self._metrics.bytes_out.labels(self._metrics.service, "sealed").inc(size)
            self._metrics.chunks_out.labels(self._metrics.service).inc(chunks)

    async def delete(self, session_id: str) -> None:
        """Crypto-erase a session, then remove its chunk files; a second call does it again."""
        # Shielded: a caller that goes away (a processor killed mid-sweep) does not leave the
        # files of an erased session behind until the orphan sweep's next pass.
        await asyncio.shield(self._delete(session_id))

    async def _delete(self, session_id: str) -> None:
        gate = self._gate(session_id)  # held: the weak map keeps a gate only while it is used
        async with gate.lock:
            # The erase is committed before any file goes: once the wrapped key is gone
            # the chunks are unreadable, whatever happens to the files afterwards.
            await self.meta.erase(session_id)
            await self.chunks.delete_session(session_id)

    async def discard_staged(self, session_id: str, lease_token: int | None = None) -> list[int]:
        """Remove the session's staged, uncommitted chunk files; return their indexes.

        Every PUT of the session already in flight is fenced off: it fails with 409
        `staging_discarded` instead of publishing.  The processor calls this, while it
        holds the session's lease, when a request that staged chunks fails; with a stale
        lease_token, or none while a lease is held, it is refused (`check_lease`, 409
        lease_lost): the new writer's files stay.
        """
        gate = self._gate(session_id)
        async with gate.lock:
            rec = await self.meta.get_session(session_id)
            check_lease(rec, lease_token)
            return await self._discard(gate, rec)

    async def transition(self, session_id: str, *, to: SessionState,
                         allowed_from: Collection[SessionState] | None,
                         lease_token: int | None = None) -> SessionRecord:
        """Change the session's state (compare-and-set); leaving recording discards staged files."""
        gate = self._gate(session_id)
        async with gate.lock:
            rec = await self.meta.transition(session_id, to=to, allowed_from=allowed_from,
                                             lease_token=lease_token)
            if rec.state is not SessionState.RECORDING:
                await self._discard(gate, rec)
            return rec

    async def _discard(self, gate: _Gate, rec: SessionRecord) -> list[int]:
        gate.discards += 1
        if rec.state is SessionState.DELETED:
            return []  # its files went with the erase
        if rec.state is SessionState.RECORDING and self.chunks.shared:
            # Another process may be committing one of them right now: only what is
            # older than the grace goes (as in the sweep); the rest is the sweep's.
            doomed = [c for c in await self.chunks.stored(rec.id)
                      if c.index >= rec.chunk_count and self.aged(c)]
            await self.chunks.remove(rec.id, doomed)
            return sorted({c.index for c in doomed})
        return await self.chunks.discard_from(rec.id, rec.chunk_count)

    def aged(self, chunk: StoredChunk, now: datetime | None = None) -> bool:
        """Return whether chunk was written more than the grace before now (the clock's)."""
        return chunk.modified < (self.clock() if now is None else now) - self.grace


def _check_writable(rec: SessionRecord, index: int, lease_token: int | None) -> None:
    require_state(rec.state, SessionState.RECORDING, action="write chunks to")
    check_lease(rec, lease_token)
    if index < rec.chunk_count:
        raise ChunkCommitted(f"chunk {index} is committed and immutable",
                             extra={"chunk_count": rec.chunk_count})
