"""Reused chunk buffers: the pool, the chunker's allocate hook and seal_into working together."""

from __future__ import annotations

import os

import pytest

from sessions.core import Chunker, ChunkSealer, sealed_length_bound
from sessions.processor.buffers import BufferPool, ChunkBuffers, mapped

MIB = 1 << 20
SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"


def test_a_released_buffer_is_handed_out_again() -> None:
    pool = BufferPool(64, keep=2)
    first = pool.acquire()
    assert len(first) == 64 and pool.idle == 0
    pool.release(first)
    assert pool.idle == 1
    assert pool.acquire() is first
    assert pool.acquire() is not first  # the pool was empty again: a new one


def test_the_pool_keeps_at_most_keep_idle_buffers() -> None:
    pool = BufferPool(16, keep=2)
    held = [pool.acquire() for _ in range(5)]
    for buf in held:
        pool.release(buf)
    assert pool.idle == 2


def test_a_buffer_of_another_length_is_not_kept() -> None:
    pool = BufferPool(16, keep=4)
    buf = pool.acquire()
    pool.release(buf[:10])  # a short tail chunk is a view of its first bytes
    pool.release(mapped(32))
    assert pool.idle == 0


def test_the_pool_hands_out_only_its_size_and_refuses_nonsense() -> None:
    pool = BufferPool(16, keep=1)
    assert len(pool.acquire(16)) == 16
    with pytest.raises(ValueError, match="16-byte"):
        pool.acquire(17)
    with pytest.raises(ValueError):
        BufferPool(0, keep=1)
    with pytest.raises(ValueError):
        BufferPool(16, keep=-1)


def test_chunk_buffers_fit_the_worst_sealed_chunk() -> None:
    buffers = ChunkBuffers(MIB, keep=3)
    assert (buffers.plain.size, buffers.sealed.size) == (MIB, sealed_length_bound(MIB))
    assert buffers.plain.keep == buffers.sealed.keep == 3
    plain, sealed = buffers.plain.acquire(), buffers.sealed.acquire()
    assert isinstance(plain, memoryview) and len(plain) == MIB and not plain.readonly
    assert isinstance(sealed, memoryview) and len(sealed) == sealed_length_bound(MIB)


def test_mapped_memory_is_a_writable_buffer_of_the_size_asked() -> None:
    view = mapped(3 * 4096 + 5)
    assert len(view) == 3 * 4096 + 5 and not view.readonly
    view[-5:] = b"abcde"
    assert bytes(view[:4]) == b"\0\0\0\0" and bytes(view[-5:]) == b"abcde"


def test_the_chunker_fills_the_buffers_it_is_given() -> None:
    given: list[bytearray] = []

    def allocate(n: int) -> bytearray:
        buf = bytearray(n)  # a caller's own bytearrays: a tail is trimmed in place
        given.append(buf)
        return buf

    data = os.urandom(2 * MIB + 5)
    chunker = Chunker(chunk_size=MIB, allocate=allocate)
    chunks = chunker.feed(data)
    tail = chunker.flush()
    assert tail is not None
    assert [bytes(c) for c in [*chunks, tail]] == [data[:MIB], data[MIB:2 * MIB], data[2 * MIB:]]
    assert all(c is g for c, g in zip([*chunks, tail], given, strict=True))


def test_the_chunker_refuses_a_buffer_of_the_wrong_size_or_read_only() -> None:
    chunker = Chunker(chunk_size=MIB, allocate=lambda n: bytearray(n - 1))
    with pytest.raises(ValueError, match="writable bytes"):
        chunker.feed(b"x")
    chunker = Chunker(chunk_size=MIB, allocate=lambda n: memoryview(bytes(n)))
    with pytest.raises(ValueError, match="writable bytes"):
        chunker.feed(b"x")


def test_a_tail_in_a_view_buffer_is_a_view_of_its_first_bytes() -> None:
    given = mapped(MIB)
    chunker = Chunker(chunk_size=MIB, allocate=lambda n: given)
    assert chunker.feed(b"abc") == []
    tail = chunker.flush()
    assert isinstance(tail, memoryview) and tail.obj is given.obj and bytes(tail) == b"abc"


def test_a_stream_sealed_through_reused_buffers_opens_chunk_by_chunk() -> None:
    """The processor's loop in miniature: a plaintext buffer goes back once sealed."""
    sealer = ChunkSealer(bytes(range(32)), session_id=SID)
    buffers = ChunkBuffers(MIB, keep=2)
    out = buffers.sealed.acquire()
    data = os.urandom(MIB) + b"screen " * 300_000  # one raw chunk, then compressible ones
    chunker = Chunker(chunk_size=MIB, allocate=buffers.plain.acquire)
    stored: list[bytes] = []
    full: set[int] = set()

    def seal(chunk: bytearray) -> None:
        sealed = sealer.seal_into(chunk, index=len(stored), out=out)
        stored.append(bytes(sealed.data))  # storage keeps its own copy
        buffers.plain.release(chunk)

    for chunk in chunker.iter_feed(data):
        full.add(id(chunk))
        seal(chunk)
    tail = chunker.flush()
    assert tail is not None and len(tail) < MIB
    seal(tail)  # a view of the first bytes: not a whole buffer, so not kept
    assert len(stored) == 4 and len(full) == 1  # all three full chunks filled one buffer
    assert buffers.plain.idle == 0  # the tail took that buffer, and a part is not kept
    opened = b"".join(sealer.open(blob, index=i) for i, blob in enumerate(stored))
    assert opened == data


# -- the processor-wide memory budget -------------------------------------------------------

@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_lease_gets_what_is_free_and_later_ones_wait_in_line() -> None:
    import asyncio

    from sessions.processor.buffers import MemoryBudget

    budget = MemoryBudget(100)
    first = await budget.lease(70, least=20)
    assert first.size == 70 and budget.free == 30
    second = await budget.lease(50, least=30)  # only 30 free: it takes what is free
    assert second.size == 30 and budget.free == 0
    third = asyncio.create_task(budget.lease(40, least=40))
    fourth = asyncio.create_task(budget.lease(5, least=5))  # small, but behind the third
    await asyncio.sleep(0.01)
    assert not third.done() and not fourth.done()  # back-pressure: nothing is allocated
    second.release()
    await asyncio.sleep(0.01)
    assert not third.done() and not fourth.done()  # 30 free: still not the third's 40
    first.release()
    assert (await third).size == 40 and (await fourth).size == 5
    first.release()  # a second release does nothing
    assert budget.leased == 45


@pytest.mark.anyio
async def test_a_cancelled_wait_leaves_the_line_and_a_minimum_past_the_budget_runs_alone() -> None:
    import asyncio

    from sessions.processor.buffers import MemoryBudget

    budget = MemoryBudget(64)
    held = await budget.lease(64, least=64)
    waiting = asyncio.create_task(budget.lease(10, least=10))
    behind = asyncio.create_task(budget.lease(10, least=10))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.release()
    assert (await behind).size == 10
    (await behind).release()
    huge = await budget.lease(1000, least=500)  # cut to the whole budget
    assert huge.size == 64 and budget.free == 0
    huge.release()
    assert budget.leased == 0


def test_pooled_buffers_are_counted_in_the_budget_and_idle_ones_dropped_past_it() -> None:
    import gc

    from sessions.processor.buffers import MemoryBudget

    budget = MemoryBudget(3 << 20)
    pool = BufferPool(1 << 20, keep=100, budget=budget)
    other = BufferPool(1 << 20, keep=100, budget=budget)
    held = [pool.acquire() for _ in range(3)]
    assert budget.resident == 3 << 20
    for buf in held:
        pool.release(buf)
    del held, buf
    assert pool.idle == 3 and budget.resident == 3 << 20
    taken = other.acquire()  # a 4th buffer: an idle one elsewhere is dropped for it
    gc.collect()
    assert pool.idle == 2 and budget.resident == 3 << 20
    other.release(taken)
    del taken
    assert budget.resident == 3 << 20
