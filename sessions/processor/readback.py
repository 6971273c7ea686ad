"""The read path, top to bottom: a session's sealed chunks come back, are checked, are opened.

A `ChunkReader` is built once per operation with everything the way out needs: where
chunks are read from (`ChunkSource`, storage), the session's sealer, the rows it trusts
(the signed manifest's, or storage's once they extend the signed checkpoint), the reused
buffers of its chunk size and the node's `ReadResources` (worker threads, read-ahead,
the shared memory budget).  Each operation then runs in this module from start to end:

1. lease its share of the memory budget (waiting in line while it is taken: back-pressure);
2. fetch chunks ahead, as far as the lease allows, into reused buffers of the pool;
3. check each chunk's sealed bytes against its leaf hash, then open it on a worker thread;
4. hand out plaintext pieces (`plaintext`) or what each chunk's bytes are (`examine`);
5. give the buffers and the lease back.

No byte of a chunk is released before its sealed form hashes to the leaf hash the
session commits to (and, once finalized, the signed root covers those leaf hashes).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from sessions.common.errors import ChunkCorrupt, ChunkNotFound
from sessions.common.ranges import ByteRange as ByteRange
from sessions.common.ranges import parse_range as parse_range
from sessions.core import ChunkSealer, HeaderError, OpenError, leaf_hash, parse_header
from sessions.processor.buffers import ChunkBuffers, Lease, MemoryBudget
from sessions.processor.storage_client import ChunkOverflow, ChunkRow

T = TypeVar("T")


class BadChunk(ChunkCorrupt):
    """A chunk failed verification: `reason` is missing, altered or unopenable."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"chunk {index} is {reason}; no bytes of it were returned",
                         extra={"index": index, "reason": reason})
        self.index, self.reason = index, reason


class ChunkSource(Protocol):
    """Where sealed chunks are read from (`StorageClient`; an in-memory stand-in in tests)."""

    async def read_chunk_into(self, sid: str, index: int, buf: memoryview) -> memoryview:
        """Return the view of the chunk's sealed bytes read into `buf`.

        Raises ChunkNotFound if there is none, ChunkOverflow if it is longer than `buf`.
        """
        ...


@dataclass(frozen=True, slots=True)
class ReadResources:
    """What every reader of this node shares: worker threads, read-ahead, the memory budget.

    `workers` >= 1 chunks are opened at once on `executor`; up to `prefetch` + 2 chunks
    are in flight per operation when the budget allows.
    """

    executor: Executor
    workers: int
    prefetch: int
    budget: MemoryBudget


@dataclass(frozen=True, slots=True)
class ChunkFacts:
    """What a stored chunk's bytes are: `leaf` is None if the file is missing.

    `length` and `compressed` come from the sealed header (covered by the leaf hash
    and authenticated by the AEAD), so they are facts once the leaf hash is trusted.
    """

    index: int
    leaf: bytes | None
    sealed_length: int = 0
    length: int | None = None
    compressed: bool | None = None
    opens: bool = False
    overflow: bool = False


def _ignore(size: int) -> None:
    return None


def _cut(row: ChunkRow, plain: bytes, rng: ByteRange | None) -> bytes:
    """Return the part of a chunk's plaintext inside rng (the whole chunk without a copy)."""
    if rng is None:
        return plain
    lo, hi = max(rng.start - row.offset, 0), min(rng.end - row.offset, row.length)
    return plain if (lo, hi) == (0, row.length) else plain[lo:hi]


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield b""


class ChunkReader:
    """Reads one session's chunks by its trusted rows: verified plaintext or per-chunk facts."""

    def __init__(self, source: ChunkSource, sid: str, rows: Sequence[ChunkRow], *,
                 sealer: ChunkSealer, buffers: ChunkBuffers, resources: ReadResources) -> None:
        self._source, self._sid, self._rows, self._sealer = source, sid, rows, sealer
        self._chunk_size = buffers.chunk_size
        # Reused buffers sized for the largest sealed chunk, for fetching and for opening.
        self._pool = buffers.sealed
        self._res = resources
        self._opening = asyncio.Semaphore(max(1, resources.workers))  # chunks opened at once

    # -- 1. the lease ------------------------------------------------------------------------

    async def _lease(self, chunks: int, *, plaintext: bool) -> tuple[Lease, int]:
        """Return a lease on the memory budget for reading `chunks` chunks (waiting for it) and
        how many chunks it lets be in flight at once (>= 1).

        Each chunk in flight holds a sealed buffer; each worker opening one, a payload
        buffer; a reader handing out plaintext also holds each opened chunk and the one
        being sent, one examining chunks the plaintext each worker opens and drops
        (outside the pools).  The caller releases the lease.
        """
        sealed, workers = self._pool.size, max(1, self._res.workers)
        task = sealed + (self._chunk_size if plaintext else 0)
        opened = self._chunk_size if plaintext else workers * self._chunk_size
        fixed = workers * sealed + opened
        most = min(self._res.prefetch + 2, max(chunks, 1))
        lease = await self._res.budget.lease(fixed + most * task,
                                             least=fixed + min(2, most) * task)
        tasks = max(1, min(most, (lease.size - fixed) // task))
        lease.hold_unpooled((tasks + 1) * self._chunk_size if plaintext else opened)
        return lease, tasks

    # -- 2. fetching ahead -------------------------------------------------------------------

    async def _ahead(self, indexes: Sequence[int], tasks: int,
                     work: Callable[[int], Awaitable[T]]) -> AsyncGenerator[T, None]:
        """Yield work(i) for each index in order, keeping up to `tasks` of them running
        (tasks - 1 ahead while the one yielded is awaited)."""
        pending: deque[asyncio.Future[T]] = deque()
        upcoming = iter(indexes)
        try:
            for index in itertools.islice(upcoming, max(1, tasks - 1)):
                pending.append(asyncio.ensure_future(work(index)))
            while pending:
                head = pending.popleft()
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append(asyncio.ensure_future(work(nxt)))
                yield await head
        finally:
            for task in pending:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: a failure nobody reached is not an error
                else:
                    task.cancel()

    async def _fetch(self, index: int, buf: memoryview) -> memoryview:
        """Return the view of chunk `index`'s stored bytes in `buf`; BadChunk if missing or
        longer than any sealed chunk."""
        try:
            return await self._source.read_chunk_into(self._sid, index, buf)
        except ChunkNotFound:
            raise BadChunk(index, "missing") from None
        except ChunkOverflow:
            raise BadChunk(index, "altered") from None

    # -- 3. checking and opening -------------------------------------------------------------

    async def _on_worker(self, index: int, work: Callable[[memoryview, memoryview], T]) -> T:
        """Return work(sealed bytes of chunk `index`, scratch buffer), run on a worker thread.

        The sealed bytes and the decrypted payload live in reused buffers, taken and given
        back on the event loop; the payload buffer is taken only to open (one per worker
        at a time).  They go back only after a clean finish: if this task is cancelled, the
        worker thread may still be using them, so they are left to it and dropped.
        """
        sealed = self._pool.acquire()
        try:
            view = await self._fetch(index, sealed)
        except BadChunk:
            self._pool.release(sealed)
            raise
        async with self._opening:
            scratch = self._pool.acquire()
            done = await asyncio.get_running_loop().run_in_executor(
                self._res.executor, work, view, scratch)
        view.release()
        self._pool.release(scratch)
        self._pool.release(sealed)
        return done

    async def _opened(self, index: int) -> tuple[ChunkRow, bytes]:
        row = self._rows[index]
        return row, await self._on_worker(index, partial(check_and_open, self._sealer, row))

    async def _examined(self, index: int) -> ChunkFacts:
        try:
            return await self._on_worker(index, partial(examine, self._sealer, index))
        except BadChunk as exc:
            if exc.reason == "missing":
                return ChunkFacts(index, None)
            return ChunkFacts(index, b"", overflow=True)

    # -- 4. handing out ----------------------------------------------------------------------

    async def plaintext(self, rng: ByteRange | None = None, *,
                        sent: Callable[[int], object] = _ignore
                        ) -> AsyncGenerator[bytes, None]:
        """Return the verified plaintext of `rng` (None: every chunk, whole), piece by piece.

        The first chunk is fetched, checked and opened before this returns, so a bad one
        raises BadChunk here; a later one raises it when its turn comes, before any of its
        bytes are released.  `sent(len(piece))` is called for each piece handed out.  The
        lease is given back when the stream ends, is closed, or is dropped unstarted.
        """
        span = range(len(self._rows)) if rng is None else chunk_span(self._rows, rng)
        if not span:
            return _nothing()
        lease, tasks = await self._lease(len(span), plaintext=True)
        try:
            opened = self._ahead(span, tasks, self._opened)
            first = await anext(opened)
        except BaseException:
            lease.release()
            raise
        stream = self._send(first, opened, rng, lease, sent)
        weakref.finalize(stream, lease.release)  # also if the stream is never started
        return stream

    @staticmethod
    async def _send(first: tuple[ChunkRow, bytes],
                    rest: AsyncGenerator[tuple[ChunkRow, bytes], None], rng: ByteRange | None,
                    lease: Lease, sent: Callable[[int], object]) -> AsyncGenerator[bytes, None]:
        """Yield the opened chunks, first then the rest, cut to `rng`; stop the read-ahead,
        then release the lease, however the stream ends."""
        try:
            piece = _cut(*first, rng)
            del first  # else the first chunk's plaintext stays alive as long as the stream
            sent(len(piece))
            yield piece
            async for row, plain in rest:
                piece = _cut(row, plain, rng)
                sent(len(piece))
                yield piece
        finally:
            try:
                await rest.aclose()  # cancels the chunks fetched ahead (a client went away)
            finally:
                lease.release()

    async def examine(self, indexes: Sequence[int]) -> dict[int, ChunkFacts]:
        """Return what each listed chunk's stored bytes are, whatever its row says.

        Unlike `plaintext`, nothing is trusted: the facts (the bytes' leaf hash, sealed
        length, header fields, whether they open at their index) are compared with the
        signed tree by the caller (`integrity.chunk_verdicts`), so chunk damage and row
        damage can be told apart.
        """
        lease, tasks = await self._lease(len(indexes), plaintext=False)
        try:
            return {f.index: f async for f in self._ahead(indexes, tasks, self._examined)}
        finally:
            lease.release()


def examine(sealer: ChunkSealer, index: int, data: bytes | memoryview,
            scratch: memoryview | None = None) -> ChunkFacts:
    """Return the facts of one chunk's stored bytes: leaf hash, header, whether it opens."""
    digest = leaf_hash(data)
    try:
        header = parse_header(data)
    except HeaderError:
        return ChunkFacts(index, digest, len(data))
    try:
        plain = sealer.open(data, index=index, scratch=scratch)
        opens = len(plain) == header.plaintext_length
    except OpenError:
        opens = False
    return ChunkFacts(index, digest, len(data), header.plaintext_length, header.compressed,
                      opens)


def check_and_open(sealer: ChunkSealer, row: ChunkRow, data: bytes | memoryview,
                   scratch: memoryview | None = None) -> bytes:
    """Return the plaintext of a sealed chunk after checking its leaf hash; raise BadChunk."""
    if leaf_hash(data) != row.leaf_hash:
        raise BadChunk(row.index, "altered")
    try:
        plain = sealer.open(data, index=row.index, scratch=scratch)
    except OpenError:
        raise BadChunk(row.index, "unopenable") from None
    if len(plain) != row.length:
        raise BadChunk(row.index, "unopenable")
    return plain


def chunk_span(rows: Sequence[ChunkRow], rng: ByteRange) -> range:
    """Return the chunk indexes whose plaintext overlaps rng (rows are contiguous by offset)."""
    starts = [r.offset for r in rows]
    first = bisect.bisect_right(starts, rng.start) - 1
    last = bisect.bisect_right(starts, rng.end - 1) - 1
    return range(first, last + 1)


def sample_indexes(count: int, percent: float, *, rng: random.Random | None = None) -> list[int]:
    """Return the sorted chunk indexes to check: all of them, or about percent% (at least one)."""
    if percent >= 100 or count == 0:
        return list(range(count))
    k = max(1, round(count * percent / 100))
    return sorted((rng or random.SystemRandom()).sample(range(count), k))
