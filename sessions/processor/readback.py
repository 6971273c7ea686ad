"""The read path: sealed chunks come back, are checked against their leaf hashes, then opened.

No byte of a chunk is released before its sealed form hashes to the leaf hash
the session commits to (and, once finalized, the signed root covers those leaf
hashes).  Chunks are fetched ahead so replay runs at full speed.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from sessions.common.errors import ChunkCorrupt, ChunkNotFound
from sessions.core import ChunkSealer, HeaderError, OpenError, leaf_hash, parse_header
from sessions.processor.buffers import BufferPool
from sessions.processor.ranges import ByteRange as ByteRange
from sessions.processor.ranges import parse_range as parse_range
from sessions.processor.storage_client import ChunkOverflow, ChunkRow, StorageClient

T = TypeVar("T")

class BadChunk(ChunkCorrupt):
    """A chunk failed verification: `reason` is missing, altered or unopenable."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"chunk {index} is {reason}; no bytes of it were returned",
                         extra={"index": index, "reason": reason})
        self.index, self.reason = index, reason


class ChunkReader:
    """Fetches a session's sealed chunks ahead of use and checks each against its leaf hash."""

    def __init__(self, storage: StorageClient, sid: str, rows: Sequence[ChunkRow], *,
                 executor: Executor, prefetch: int, buffers: BufferPool,
                 workers: int = 1) -> None:
        self._storage, self._sid, self._rows = storage, sid, rows
        self._executor, self._prefetch = executor, max(0, prefetch)
        self._opening = asyncio.Semaphore(max(1, workers))  # chunks being opened at once
        # Reused buffers, sized for the largest sealed chunk, for fetching and opening.
        self._buffers = buffers

    async def _ahead(self, indexes: Sequence[int],
                     work: Callable[[int], Awaitable[T]]) -> AsyncIterator[T]:
        """Yield work(i) for each index in order, keeping up to prefetch + 2 of them running
        (prefetch + 1 ahead while the one yielded is awaited)."""
        pending: deque[asyncio.Future[T]] = deque()
        upcoming = iter(indexes)
        try:
            for index in itertools.islice(upcoming, self._prefetch + 1):
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

    def row(self, index: int) -> ChunkRow:
        return self._rows[index]

    def opened(self, sealer: ChunkSealer,
               indexes: Sequence[int]) -> AsyncIterator[tuple[ChunkRow, bytes]]:
        """Yield (row, plaintext) in order, fetching and opening ahead on the worker threads.

        Each chunk is checked against its leaf hash before it is opened; a bad one
        raises BadChunk when its turn comes, before any of its bytes are released.
        """
        loop = asyncio.get_running_loop()
        pool = self._buffers

        async def fetch_and_open(index: int) -> tuple[ChunkRow, bytes]:
            row = self._rows[index]
            # The sealed bytes and the decrypted payload live in reused buffers, taken and
            # given back on the event loop; only the plaintext is new.  The payload buffer
            # is taken only to open (one per worker thread at a time).  They go back only
            # after a clean finish: if this task is cancelled, the worker thread may still
            # be using them, so they are left to it and dropped.
            sealed = pool.acquire()
            view = await self._fetch_into(index, sealed)
            async with self._opening:
                scratch = pool.acquire()
                plain = await loop.run_in_executor(self._executor, check_and_open, sealer,
                                                   row, view, scratch)
            view.release()
            pool.release(scratch)
            pool.release(sealed)
            return row, plain
        return self._ahead(indexes, fetch_and_open)

    def examined(self, sealer: ChunkSealer, indexes: Sequence[int]) -> AsyncIterator[ChunkFacts]:
        """Yield what each chunk's stored bytes are, in order, whatever its row says.

        Unlike `opened`, nothing is trusted: the facts (the bytes' leaf hash, sealed
        length, header fields, whether they open at their index) are compared with
        the signed tree by the caller, so chunk damage and row damage can be told apart.
        """
        loop = asyncio.get_running_loop()
        pool = self._buffers

        async def fetch_and_examine(index: int) -> ChunkFacts:
            sealed = pool.acquire()
            try:
                view = await self._fetch_into(index, sealed)
            except BadChunk as exc:
                pool.release(sealed)
                if exc.reason == "missing":
                    return ChunkFacts(index, None)
                return ChunkFacts(index, b"", overflow=True)
            async with self._opening:
                scratch = pool.acquire()
                facts = await loop.run_in_executor(self._executor, examine, sealer, index,
                                                   view, scratch)
            view.release()
            pool.release(scratch)
            pool.release(sealed)
            return facts
        return self._ahead(indexes, fetch_and_examine)

    async def _fetch_into(self, index: int, buf: memoryview) -> memoryview:
        try:
            return await self._storage.read_chunk_into(self._sid, index, buf)
        except ChunkNotFound:
            raise BadChunk(index, "missing") from None
        except ChunkOverflow:
            raise BadChunk(index, "altered") from None


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


async def plaintext_stream(reader: ChunkReader, sealer: ChunkSealer, rows: Sequence[ChunkRow],
                           rng: ByteRange) -> AsyncIterator[bytes]:
    """Yield the plaintext bytes of rng, chunk by chunk, each verified before release."""
    async for row, plain in reader.opened(sealer, chunk_span(rows, rng)):
        lo = max(rng.start - row.offset, 0)
        hi = min(rng.end - row.offset, row.length)
        yield plain if (lo, hi) == (0, row.length) else plain[lo:hi]


def sample_indexes(count: int, percent: float, *, rng: random.Random | None = None) -> list[int]:
    """Return the sorted chunk indexes to check: all of them, or about percent% (at least one)."""
    if percent >= 100 or count == 0:
        return list(range(count))
    k = max(1, round(count * percent / 100))
    return sorted((rng or random.SystemRandom()).sample(range(count), k))
