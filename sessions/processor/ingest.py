"""The write path: a plaintext byte stream becomes sealed, committed chunks.

Three stages run concurrently, joined by small bounded queues, so the next
chunk is read while one is sealed and another is being stored:

    request body --chunk_stream--> [plain q] --seal (thread)--> [sealed q] --> storage PUT + commit

A byte is acknowledged only after storage has fsync'd its sealed chunk and
committed the chunk's metadata.  With an `Upload-Checksum` the request is
all-or-nothing: chunks are staged, and committed in one transaction only when
the digest of the whole body matches.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from sessions.common.checksums import Checksum, hasher
from sessions.common.errors import (
    ChecksumMismatch,
    PayloadTooLarge,
    ServiceError,
    TruncatedBody,
)
from sessions.core import ChunkBuffer, Chunker, ChunkSealer, SealedChunk, sealed_length_bound
from sessions.processor.buffers import ChunkBuffers
from sessions.processor.storage_client import ChunkRow, SessionRow, StorageClient

_END = None


@dataclass
class _Body:
    """The request body, counted and capped; a truncated one (the client went away) ends it
    instead of raising, so the chunks received are still sealed and committed."""

    source: AsyncIterable[bytes]
    max_bytes: int
    received: int = 0
    disconnected: bool = False

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self.source:
                self.received += len(piece)
                if self.received > self.max_bytes:
                    raise PayloadTooLarge(f"a request may carry at most {self.max_bytes} bytes")
                yield piece
        except TruncatedBody:
            self.disconnected = True


@dataclass(frozen=True, slots=True)
class _Sealed:
    """A sealed chunk, the pooled buffer its bytes live in (None: its own bytes), and the
    CRC-32C storage checks them by (`STORE_CHECKSUM`)."""

    chunk: SealedChunk
    buffer: memoryview | None
    checksum: Checksum


STORE_CHECKSUM = "crc32c"
"""What storage checks a sealed chunk's bytes by on arrival, instead of hashing them again
for their leaf hash (storage's `BodyCheck` says why that is enough)."""


def lane_sizes(chunk_size: int, *, length: int | None) -> tuple[int, int]:
    """Return the bytes one plaintext and one sealed buffer of an upload hold at most.

    A body of known length shorter than a chunk fills only that much of each buffer.
    """
    plain, sealed = chunk_size, sealed_length_bound(chunk_size)
    if length is not None and length < chunk_size:
        plain, sealed = max(length, 1), sealed_length_bound(max(length, 1))
    return plain, sealed


def lane_permits(granted: int, *, plain: int, sealed: int, parallel: int,
                 inflight: int) -> tuple[int, int]:
    """Return how many plaintext and sealed buffers `granted` bytes allow (at least one each),
    up to what the pipeline can use: parallel + 2 and parallel + inflight + 1."""
    most_plain, most_sealed = parallel + 2, parallel + inflight + 1
    a = b = 1
    left = granted - plain - sealed
    while left > 0 and (a < most_plain or b < most_sealed):
        grew = False
        if b < most_sealed and left >= sealed:
            b, left, grew = b + 1, left - sealed, True
        if a < most_plain and left >= plain:
            a, left, grew = a + 1, left - plain, True
        if not grew:
            break
    return a, b


def lane_want(chunk_size: int, *, parallel: int, inflight: int,
              length: int | None) -> tuple[int, int]:
    """Return (bytes wanted, least bytes) of an upload's lease on the memory budget.

    Plaintext buffers: one filling, one queued, `parallel` being sealed and hashed.
    Sealed: `parallel` being sealed or handed on, one queued, `inflight` being stored.
    """
    plain, sealed = lane_sizes(chunk_size, length=length)
    chunks = -(-length // chunk_size) if length else None
    a, b = parallel + 2, parallel + inflight + 1
    if chunks is not None:
        a, b = min(a, chunks + 1), min(b, chunks)
    return a * plain + max(b, 1) * sealed, plain + sealed


class _Lane:
    """One upload's buffers: permits for `plain` and `sealed` ones, taken from its pools.

    A plaintext buffer is given back once both its seal and its digest update are
    done, a sealed one once storage has it; waiting for a permit is the back-pressure.
    """

    def __init__(self, pools: ChunkBuffers | None, chunk_size: int, permits: tuple[int, int]
                 ) -> None:
        self._pools, self._chunk_size = pools, chunk_size
        self._plain, self._sealed = (asyncio.Semaphore(permits[0]),
                                     asyncio.Semaphore(permits[1]))

    async def plain(self) -> ChunkBuffer:
        await self._plain.acquire()
        if self._pools is None:
            return bytearray(self._chunk_size)
        return self._pools.plain.acquire()

    def give_plain(self, buf: ChunkBuffer, *, reuse: bool = True) -> None:
        self._plain.release()
        if reuse and self._pools is not None and isinstance(buf, memoryview):
            self._pools.plain.release(buf)

    async def sealed(self) -> memoryview | None:
        await self._sealed.acquire()
        return None if self._pools is None else self._pools.sealed.acquire()

    def give_sealed(self, buf: memoryview | None) -> None:
        self._sealed.release()
        if buf is not None and self._pools is not None:
            self._pools.sealed.release(buf)


@dataclass
class Upload:
    """One PATCH request's worth of work against one session."""

    storage: StorageClient
    sealer: ChunkSealer
    session: SessionRow
    executor: Executor
    hasher: Executor
    parallel: int
    inflight: int
    checksum: Checksum | None
    on_commit: Callable[[list[ChunkRow]], None]
    buffers: ChunkBuffers | None = None
    permits: tuple[int, int] | None = None
    lease_token: int | None = None
    """The fencing token of the session's writer lease, sent with every PUT and commit."""
    offset: int = field(init=False)
    chunk_count: int = field(init=False)

    def __post_init__(self) -> None:
        self.offset = self.session.offset
        self.chunk_count = self.session.chunk_count
        self._digest = None if self.checksum is None else hasher(self.checksum.algorithm)
        # Reused buffers (or None: every chunk afresh), with or without `Upload-Checksum`.
        pools = self.buffers
        pools = pools if pools is not None and pools.chunk_size == self.session.chunk_size else None
        permits = self.permits or (self.parallel + 2, self.parallel + self.inflight + 1)
        self._lane = _Lane(pools, self.session.chunk_size, permits)
        self._staged: list[ChunkRow] = []
        self._hashed: asyncio.Future[None] | None = None

    async def run(self, body: _Body, *, declared_length: int | None) -> SessionRow:
        """Seal and commit the whole body; return the session as committed afterwards."""
        plain: asyncio.Queue[ChunkBuffer | None] = asyncio.Queue(maxsize=1)
        sealed: asyncio.Queue[_Sealed | None] = asyncio.Queue(maxsize=1)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(body, plain))
                tg.create_task(self._seal(plain, sealed))
                tg.create_task(self._store(sealed))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        truncated = body.disconnected or (declared_length is not None
                                          and body.received != declared_length)
        return await self._finish(truncated)

    async def _read(self, body: _Body, out: asyncio.Queue[ChunkBuffer | None]) -> None:
        """Cut the body into chunks, each in a buffer taken (waiting) from the lane."""
        lane = self._lane
        spare: list[ChunkBuffer] = []  # the buffer the chunker fills next, taken ahead
        chunker = Chunker(chunk_size=self.session.chunk_size, allocate=lambda _: spare.pop())
        async for piece in body.pieces():
            if chunker.buffered == 0 and not spare and len(piece):
                spare.append(await lane.plain())
            for chunk in chunker.iter_feed(piece):
                await out.put(chunk)
                if not spare:
                    spare.append(await lane.plain())
        tail = chunker.flush()
        if tail is not None:
            await out.put(tail)
        for buf in spare:
            lane.give_plain(buf)
        await out.put(_END)

    async def _seal(self, inq: asyncio.Queue[ChunkBuffer | None],
                    out: asyncio.Queue[_Sealed | None]) -> None:
        """Seal up to `parallel` chunks at once on the worker threads; pass them on in order.

        zstd and SHA-256 release the GIL on large buffers (README, "One service skeleton"
        has the figures), so with LUCID_SEAL_WORKERS > 1 sealing can use idle cores while
        the event loop keeps moving bytes.
        """
        loop = asyncio.get_running_loop()
        lane = self._lane
        slots = asyncio.Semaphore(self.parallel)
        order: asyncio.Queue[asyncio.Future[_Sealed] | None] = asyncio.Queue()

        async def emit() -> None:  # passes each chunk on as soon as it and those before are sealed
            while (sealing := await order.get()) is not None:
                await out.put(await sealing)
                # A slot is held until the chunk is handed on, not only until it is sealed:
                # otherwise sealed chunks pile up here while storage is the slower side.
                slots.release()
            await out.put(_END)

        index = self.session.chunk_count
        async with asyncio.TaskGroup() as tg:
            tg.create_task(emit())
            while (chunk := await inq.get()) is not _END:
                await slots.acquire()
                buffer = await lane.sealed()
                sealing = loop.run_in_executor(self.executor, self._seal_one, chunk, index,
                                               buffer)
                works: list[asyncio.Future[object]] = [sealing]  # type: ignore[list-item]
                if self._digest is not None:  # one hashing thread keeps the digest in order
                    self._hashed = loop.run_in_executor(self.hasher, self._digest.update, chunk)
                    works.append(self._hashed)  # type: ignore[arg-type]
                self._give_back_after(chunk, works)
                order.put_nowait(sealing)
                index += 1
            order.put_nowait(None)
        if self._hashed is not None:
            await self._hashed

    def _give_back_after(self, chunk: ChunkBuffer, works: list[asyncio.Future[object]]) -> None:
        """Give the plaintext buffer back once its seal and digest update are both done.

        A cancelled one may still be running on its thread: its buffer is dropped, not reused.
        """
        left = [len(works)]
        clean = [True]

        def done(work: asyncio.Future[object]) -> None:
            clean[0] = clean[0] and not work.cancelled()
            left[0] -= 1
            if left[0] == 0:
                self._lane.give_plain(chunk, reuse=clean[0])
        for work in works:
            work.add_done_callback(done)

    def _seal_one(self, chunk: ChunkBuffer, index: int, buffer: memoryview | None) -> _Sealed:
        if buffer is None:
            sealed = self.sealer.seal(chunk, index=index)
        else:
            sealed = self.sealer.seal_into(chunk, index=index, out=buffer)
        return _Sealed(sealed, buffer, Checksum.of(STORE_CHECKSUM, sealed.data))

    async def _store(self, inq: asyncio.Queue[_Sealed | None]) -> None:
        """Store up to `inflight` chunks at once while a lander commits them in order.

        Parallel PUTs let storage overlap its fsyncs; the lander commits every chunk
        as soon as it and all before it have landed, taking whatever has landed
        meanwhile in the same transaction (a group commit).
        """
        slots = asyncio.Semaphore(self.inflight)
        pending: deque[tuple[ChunkRow, asyncio.Task[None]]] = deque()
        more = asyncio.Event()
        closed = False

        async def put(sealed: _Sealed) -> None:
            chunk = sealed.chunk
            try:
                await self.storage.put_chunk(self.session.id, chunk.index, chunk.data,
                                             chunk.leaf_hash, checksum=sealed.checksum,
                                             lease_token=self.lease_token)
            finally:
                slots.release()
                self._lane.give_sealed(sealed.buffer)

        async def land() -> None:
            while pending or not closed:
                if not pending:
                    more.clear()
                    await more.wait()
                    continue
                await pending[0][1]
                landed: list[ChunkRow] = []
                while pending and pending[0][1].done():
                    row, task = pending.popleft()
                    task.result()
                    landed.append(row)
                await self._land(landed)

        offset = self.session.offset
        async with asyncio.TaskGroup() as tg:
            lander = tg.create_task(land())
            while (sealed := await inq.get()) is not _END:
                chunk = sealed.chunk
                await slots.acquire()
                row = ChunkRow(index=chunk.index, offset=offset, length=chunk.plaintext_length,
                               sealed_length=chunk.sealed_length, leaf_hash=chunk.leaf_hash,
                               compressed=chunk.compressed)
                offset += chunk.plaintext_length
                pending.append((row, tg.create_task(put(sealed))))
                more.set()
                if lander.done():
                    break
            closed = True
            more.set()

    async def _land(self, landed: list[ChunkRow]) -> None:
        """Commit chunks that have landed, or stage them until the request's checksum is known."""
        if self._digest is None:
            await self._commit(landed)
        else:
            self._staged.extend(landed)

    async def _commit(self, rows: list[ChunkRow]) -> None:
        committed = await self.storage.commit(self.session.id, expected_offset=self.offset,
                                              chunks=rows, lease_token=self.lease_token)
        self.offset, self.chunk_count = committed.offset, committed.chunk_count
        self.on_commit(rows)

    async def _finish(self, truncated: bool) -> SessionRow:
        if self._digest is not None:
            if truncated:
                raise TruncatedBody("the body ended early; nothing was committed",
                                    extra={"offset": self.offset})
            if self.checksum is None or self._digest.digest() != self.checksum.digest:
                raise ChecksumMismatch(extra={"offset": self.offset})
            if self._staged:
                await self._commit(self._staged)
        elif truncated:
            raise TruncatedBody("the body ended early; the bytes received were committed",
                                extra={"offset": self.offset})
        return await self.storage.get_session(self.session.id)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the most telling leaf of a task group's failure: a ServiceError if there is one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, ServiceError):
            return exc
    return leaves[0]


async def ingest(*, storage: StorageClient, sealer: ChunkSealer, session: SessionRow,
                 source: AsyncIterable[bytes], checksum: Checksum | None,
                 declared_length: int | None, max_bytes: int, executor: Executor,
                 hasher: Executor, parallel: int, inflight: int,
                 on_commit: Callable[[list[ChunkRow]], None],
                 buffers: ChunkBuffers | None = None,
                 permits: tuple[int, int] | None = None,
                 lease_token: int | None = None) -> SessionRow:
    """Seal and commit one request body at the session's committed offset.

    `source` raises TruncatedBody when its client went away (`sessions.common.bodies`):
    the chunks received are still committed (none with a checksum), then TruncatedBody
    carries the committed offset.

    `buffers`, if given and of the session's chunk size, supplies reused chunk buffers;
    `permits` caps how many plaintext and sealed ones it holds at once (`lane_permits`).
    `lease_token` fences every write: once another writer took the session over,
    storage refuses them with 409 `lease_lost` and nothing more is committed.
    """
    upload = Upload(storage=storage, sealer=sealer, session=session, executor=executor,
                    hasher=hasher, parallel=parallel, inflight=inflight, checksum=checksum,
                    on_commit=on_commit, buffers=buffers, permits=permits,
                    lease_token=lease_token)
    return await upload.run(_Body(source, max_bytes), declared_length=declared_length)
