"""The read path: sealed chunks come back, are checked against their leaf hashes, then opened.

No byte of a chunk is released before its sealed form hashes to the leaf hash
the session commits to (and, once finalized, the signed root covers those leaf
hashes).  Chunks are fetched ahead so replay runs at full speed.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from sessions.common.errors import (
    BadRequest,
    ChunkCorrupt,
    ChunkNotFound,
    RangeNotSatisfiable,
)
from sessions.core import ChunkSealer, OpenError, leaf_hash
from sessions.processor.storage_client import ChunkRow, StorageClient

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The half-open plaintext byte range [start, end) a reader asked for."""

    start: int
    end: int


def parse_range(header: str | None, *, size: int) -> ByteRange | None:
    """Return the single byte range of an HTTP Range header, or None for the whole stream.

    Supports `bytes=a-b`, `bytes=a-` and `bytes=-n` (RFC 9110 §14.1.2); several ranges
    or a range starting at or past `size` are unsatisfiable (416).
    """
    if header is None:
        return None
    if "," in header:
        raise RangeNotSatisfiable("only a single byte range is supported",
                                  extra={"size": size})
    m = _RANGE_RE.match(header.strip())
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        raise BadRequest("Range must look like bytes=START-END, bytes=START- or bytes=-SUFFIX")
    first, last = m.group(1), m.group(2)
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
        if last != "" and int(last) < start:
            raise BadRequest("Range end is before its start")
    if start >= size or start >= end:
        raise RangeNotSatisfiable(extra={"size": size})
    return ByteRange(start, end)


class BadChunk(ChunkCorrupt):
    """A chunk failed verification: `reason` is missing, altered or unopenable."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"chunk {index} is {reason}; no bytes of it were returned",
                         extra={"index": index, "reason": reason})
        self.index, self.reason = index, reason


class ChunkReader:
    """Fetches a session's sealed chunks ahead of use and checks each against its leaf hash."""

    def __init__(self, storage: StorageClient, sid: str, rows: Sequence[ChunkRow], *,
                 executor: Executor, prefetch: int) -> None:
        self._storage, self._sid, self._rows = storage, sid, rows
        self._executor, self._prefetch = executor, max(0, prefetch)

    async def _fetch(self, index: int) -> bytes:
        try:
            return await self._storage.get_chunk(self._sid, index)
        except ChunkNotFound:
            raise BadChunk(index, "missing") from None

    async def sealed(self, indexes: Sequence[int]) -> AsyncIterator[tuple[ChunkRow, bytes]]:
        """Yield (row, sealed bytes) in order, keeping up to `prefetch` fetches in flight."""
        pending: deque[tuple[int, asyncio.Task[bytes]]] = deque()
        it = iter(indexes)
        try:
            for index in it:
                pending.append((index, asyncio.ensure_future(self._fetch(index))))
                if len(pending) > self._prefetch:
                    break
            while pending:
                index, task = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, asyncio.ensure_future(self._fetch(nxt))))
                yield self._rows[index], await task
        finally:
            for _, task in pending:
                task.cancel()

    async def opened(self, sealer: ChunkSealer,
                     indexes: Sequence[int]) -> AsyncIterator[tuple[ChunkRow, bytes]]:
        """Yield (row, plaintext) in order; raise BadChunk before releasing any bad chunk."""
        loop = asyncio.get_running_loop()
        async for row, data in self.sealed(indexes):
            plain = await loop.run_in_executor(self._executor, check_and_open, sealer, row, data)
            yield row, plain


def check_and_open(sealer: ChunkSealer, row: ChunkRow, data: bytes) -> bytes:
    """Return the plaintext of a sealed chunk after checking its leaf hash; raise BadChunk."""
    if leaf_hash(data) != row.leaf_hash:
        raise BadChunk(row.index, "altered")
    try:
        plain = sealer.open(data, index=row.index)
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


async def check_chunks(reader: ChunkReader, sealer: ChunkSealer | None,
                       indexes: Sequence[int], executor: Executor
                       ) -> tuple[dict[int, bytes], list[dict[str, Any]]]:
    """Return the recomputed leaf hash of each readable chunk, and the bad ones with reasons."""
    loop = asyncio.get_running_loop()
    leaves: dict[int, bytes] = {}
    bad: list[dict[str, Any]] = []
    it = reader.sealed(indexes)
    pos = 0
    while pos < len(indexes):
        try:
            async for row, data in it:
                pos += 1
                leaves[row.index] = await loop.run_in_executor(executor, leaf_hash, data)
                if leaves[row.index] != row.leaf_hash:
                    bad.append({"index": row.index, "reason": "altered"})
                elif sealer is not None:
                    try:
                        await loop.run_in_executor(executor, check_and_open, sealer, row, data)
                    except BadChunk as exc:
                        bad.append({"index": row.index, "reason": exc.reason})
        except BadChunk as exc:  # missing: note it and carry on after it
            bad.append({"index": exc.index, "reason": exc.reason})
            pos = indexes.index(exc.index) + 1
            it = reader.sealed(indexes[pos:])
    return leaves, bad
