"""The read path as one reader: pieces in order, per-chunk facts, the lease always given back.

A unit test of `sessions.processor.readback.ChunkReader` with an in-memory stand-in for
storage's chunk reads (the end-to-end tests run it against real processes); it counts
the reads in flight and watches the memory budget.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate

import pytest

from sessions.common.errors import ChunkNotFound
from sessions.core import ChunkSealer
from sessions.processor.buffers import ChunkBuffers, MemoryBudget
from sessions.processor.integrity import chunk_verdicts
from sessions.processor.readback import (
    BadChunk,
    ByteRange,
    ChunkReader,
    ReadResources,
)
from sessions.processor.storage_client import ChunkOverflow, ChunkRow

SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 4096
MIB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class MemoryChunks:
    """Sealed chunks by index, served as `StorageClient.read_chunk_into` serves them."""

    def __init__(self, stored: dict[int, bytes], *, delay: float = 0.001) -> None:
        self.stored, self.delay = stored, delay
        self.reading = self.most_reading = 0
        self.reads: list[int] = []

    async def read_chunk_into(self, sid: str, index: int, buf: memoryview) -> memoryview:
        assert sid == SID
        self.reads.append(index)
        self.reading += 1
        self.most_reading = max(self.most_reading, self.reading)
        try:
            await asyncio.sleep(self.delay)
            data = self.stored.get(index)
            if data is None:
                raise ChunkNotFound()
            if len(data) > len(buf):
                raise ChunkOverflow(index)
            buf[:len(data)] = data
            return buf[:len(data)]
        finally:
            self.reading -= 1


def plaintexts(n: int) -> list[bytes]:
    """Return n chunk plaintexts of differing lengths and content (the last one short)."""
    return [bytes([i]) * CHUNK if i < n - 1 else b"tail %d" % i for i in range(n)]


def sealed(plains: list[bytes], *, sealer: ChunkSealer | None = None
           ) -> tuple[list[ChunkRow], dict[int, bytes]]:
    sealer = sealer or ChunkSealer(KEY, session_id=SID)
    rows, stored = [], {}
    for i, offset in enumerate(accumulate([0, *map(len, plains[:-1])])):
        chunk = sealer.seal(plains[i], index=i)
        rows.append(ChunkRow(index=i, offset=offset, length=chunk.plaintext_length,
                             sealed_length=chunk.sealed_length, leaf_hash=chunk.leaf_hash,
                             compressed=chunk.compressed))
        stored[i] = bytes(chunk.data)
    return rows, stored


class Node:
    """One node's read resources: a worker thread, a memory budget, buffers of one size."""

    def __init__(self, *, budget_bytes: int = 4 * MIB, prefetch: int = 2) -> None:
        self.executor = ThreadPoolExecutor(1)
        self.budget = MemoryBudget(budget_bytes)
        self.buffers = ChunkBuffers(CHUNK, keep=4, budget=self.budget)
        self.resources = ReadResources(self.executor, 1, prefetch, self.budget)

    def reader(self, source: MemoryChunks, rows: list[ChunkRow]) -> ChunkReader:
        return ChunkReader(source, SID, rows, sealer=ChunkSealer(KEY, session_id=SID),
                           buffers=self.buffers, resources=self.resources)


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in stream]


@pytest.mark.anyio
async def test_the_whole_plaintext_comes_in_order_and_the_lease_goes_back() -> None:
    plains = plaintexts(7)
    rows, stored = sealed(plains)
    node, source = Node(prefetch=1), MemoryChunks(stored)
    sent: list[int] = []
    pieces = await collect(await node.reader(source, rows).plaintext(sent=sent.append))
    assert pieces == plains
    assert sent == [len(p) for p in plains]
    assert source.reads == list(range(7))
    assert source.most_reading <= 1 + 2  # read-ahead: prefetch + 2 at most
    assert node.budget.leased == 0 and node.budget.unpooled == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("start", "end"), [(0, 1), (10, CHUNK + 5), (CHUNK, 2 * CHUNK),
                                            (CHUNK - 1, 3 * CHUNK + 4), (3 * CHUNK, 3 * CHUNK + 6)])
async def test_a_range_reads_only_its_chunks_and_cuts_them(start: int, end: int) -> None:
    plains = plaintexts(4)
    rows, stored = sealed(plains)
    node, source = Node(), MemoryChunks(stored)
    pieces = await collect(await node.reader(source, rows).plaintext(ByteRange(start, end)))
    assert b"".join(pieces) == b"".join(plains)[start:end]
    assert source.reads == list(range(start // CHUNK, (end - 1) // CHUNK + 1))
    assert node.budget.leased == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("damage", "reason"), [("missing", "missing"), ("flipped", "altered"),
                                                ("overlong", "altered"),
                                                ("foreign", "unopenable")])
async def test_a_bad_first_chunk_raises_before_the_stream_is_returned(damage: str,
                                                                       reason: str) -> None:
    rows, stored = sealed(plaintexts(3))
    damage_chunk(stored, rows, 0, damage)
    node = Node()
    with pytest.raises(BadChunk) as info:
        await node.reader(MemoryChunks(stored), rows).plaintext()
    assert (info.value.index, info.value.reason) == (0, reason)
    assert node.budget.leased == 0 and node.budget.unpooled == 0


@pytest.mark.anyio
async def test_a_bad_later_chunk_stops_the_stream_before_any_of_its_bytes() -> None:
    plains = plaintexts(5)
    rows, stored = sealed(plains)
    damage_chunk(stored, rows, 3, "flipped")
    node = Node()
    stream = await node.reader(MemoryChunks(stored), rows).plaintext()
    got = []
    with pytest.raises(BadChunk) as info:
        async for piece in stream:
            got.append(piece)
    assert (info.value.index, info.value.reason) == (3, "altered")
    assert got == plains[:3]
    assert node.budget.leased == 0


@pytest.mark.anyio
async def test_a_stream_closed_early_or_never_started_gives_its_lease_back() -> None:
    rows, stored = sealed(plaintexts(6))
    node = Node()
    stream = await node.reader(MemoryChunks(stored), rows).plaintext()
    assert node.budget.leased > 0
    await anext(stream)
    await stream.aclose()
    assert node.budget.leased == 0 and node.budget.unpooled == 0
    unstarted = await node.reader(MemoryChunks(stored), rows).plaintext()
    assert node.budget.leased > 0
    del unstarted
    gc.collect()
    assert node.budget.leased == 0 and node.budget.unpooled == 0


@pytest.mark.anyio
async def test_closing_a_stream_stops_the_chunks_read_ahead() -> None:
    """A client that goes away leaves no read running on for it (storage is slow here)."""
    rows, stored = sealed(plaintexts(8))
    node, source = Node(prefetch=3), MemoryChunks(stored, delay=0.05)
    stream = await node.reader(source, rows).plaintext()
    await anext(stream)
    await anext(stream)  # its chunk was fetched ahead; taking it sends for one more
    await asyncio.sleep(0.01)
    assert source.reading > 0  # the next chunk is on its way
    await stream.aclose()
    for _ in range(3):
        await asyncio.sleep(0)  # the cancellations are delivered, far sooner than the reads end
    assert source.reading == 0
    assert node.budget.leased == 0


@pytest.mark.anyio
async def test_a_second_reader_waits_for_the_budget_instead_of_allocating() -> None:
    """With room for one reader at a time, the second leases only once the first is done."""
    rows, stored = sealed(plaintexts(4))
    node = Node(budget_bytes=6 * CHUNK + 2000)  # one reader's minimum, not two
    first = await node.reader(MemoryChunks(stored), rows).plaintext()
    second = asyncio.ensure_future(node.reader(MemoryChunks(stored), rows).plaintext())
    await asyncio.sleep(0.05)
    assert not second.done()  # back-pressure: waiting in line
    await collect(first)
    assert b"".join(await collect(await second)) == b"".join(plaintexts(4))
    assert node.budget.leased == 0


@pytest.mark.anyio
async def test_examined_chunks_give_one_verdict_each_whatever_the_damage() -> None:
    rows, stored = sealed(plaintexts(6))
    damage_chunk(stored, rows, 1, "missing")
    damage_chunk(stored, rows, 2, "flipped")
    damage_chunk(stored, rows, 3, "foreign")
    damage_chunk(stored, rows, 4, "overlong")
    node = Node()
    facts = await node.reader(MemoryChunks(stored), rows).examine([0, 1, 2, 3, 4, 5])
    assert sorted(facts) == [0, 1, 2, 3, 4, 5]
    assert facts[0].opens and facts[0].leaf == rows[0].leaf_hash
    verdicts = chunk_verdicts(facts, [r.leaf_hash for r in rows])
    assert verdicts == [{"index": 1, "reason": "missing"}, {"index": 2, "reason": "altered"},
                        {"index": 3, "reason": "unopenable"}, {"index": 4, "reason": "altered"}]
    assert node.budget.leased == 0


@pytest.mark.anyio
async def test_examine_reads_only_the_sampled_chunks_in_order() -> None:
    rows, stored = sealed(plaintexts(8))
    source = MemoryChunks(stored)
    facts = await Node().reader(source, rows).examine([1, 4, 6])
    assert list(facts) == [1, 4, 6] and source.reads == [1, 4, 6]
    assert all(f.opens for f in facts.values())


def damage_chunk(stored: dict[int, bytes], rows: list[ChunkRow], index: int, how: str) -> None:
    """Damage chunk `index` in storage: missing, a flipped byte, too long, or another key's."""
    if how == "missing":
        del stored[index]
    elif how == "flipped":
        data = bytearray(stored[index])
        data[-1] ^= 1
        stored[index] = bytes(data)
    elif how == "overlong":
        stored[index] = stored[index] + b"\x00" * (2 * CHUNK)
    else:  # sealed under another key, its leaf hash written into the row: only opening fails
        chunk = ChunkSealer(OTHER_KEY, session_id=SID).seal(b"x" * rows[index].length,
                                                           index=index)
        stored[index] = bytes(chunk.data)
        rows[index] = ChunkRow(index=index, offset=rows[index].offset,
                               length=chunk.plaintext_length, sealed_length=chunk.sealed_length,
                               leaf_hash=chunk.leaf_hash, compressed=chunk.compressed)
