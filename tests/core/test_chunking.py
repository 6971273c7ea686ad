"""Chunking: exact chunk sizes, exact reassembly, bounded memory, and Chunker == chunk_stream."""

from __future__ import annotations

import array
import asyncio
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessions.core import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    Chunker,
    check_chunk_size,
    chunk_stream,
)

MiB = 1024 * 1024
CS = MIN_CHUNK_SIZE  # the smallest legal size keeps the tests fast


async def _aiter(pieces: Iterable[bytes | bytearray | memoryview]) -> AsyncIterator[
        bytes | bytearray | memoryview]:
    for piece in pieces:
        yield piece


def stream_chunks(pieces: Sequence[bytes | bytearray | memoryview], chunk_size: int = CS
                  ) -> list[bytearray]:
    async def collect() -> list[bytearray]:
        return [c async for c in chunk_stream(_aiter(pieces), chunk_size=chunk_size)]
    return asyncio.run(collect())


def chunker_chunks(pieces: Sequence[bytes | bytearray | memoryview], chunk_size: int = CS
                   ) -> list[bytearray]:
    chunker = Chunker(chunk_size=chunk_size)
    out: list[bytearray] = []
    for piece in pieces:
        out.extend(chunker.feed(piece))
        assert 0 <= chunker.buffered < chunk_size
    tail = chunker.flush()
    if tail is not None:
        out.append(tail)
    assert chunker.buffered == 0 and chunker.flush() is None
    return out


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    pieces, offset = [], 0
    for size in sizes:
        pieces.append(data[offset:offset + size])
        offset += size
    pieces.append(data[offset:])
    return pieces


def assert_chunked(data: bytes, chunks: list[bytearray], chunk_size: int = CS) -> None:
    assert b"".join(chunks) == data
    assert len(chunks) == -(-len(data) // chunk_size)
    assert all(type(c) is bytearray for c in chunks)
    assert all(len(c) == chunk_size for c in chunks[:-1])
    if chunks:
        assert 1 <= len(chunks[-1]) <= chunk_size


# -- sizes -------------------------------------------------------------------------------------


def test_size_constants() -> None:
    assert (MIN_CHUNK_SIZE, MAX_CHUNK_SIZE) == (1 * MiB, 16 * MiB)
    assert DEFAULT_CHUNK_SIZE in (1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB)
    assert check_chunk_size(DEFAULT_CHUNK_SIZE) == DEFAULT_CHUNK_SIZE


@pytest.mark.parametrize("n", [MIN_CHUNK_SIZE, MIN_CHUNK_SIZE + 1, 3 * MiB, MAX_CHUNK_SIZE])
def test_check_chunk_size_accepts(n: int) -> None:
    assert check_chunk_size(n) == n


@pytest.mark.parametrize("n", [0, -1, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, True, 1.5 * MiB,
                               "1048576", None])
def test_check_chunk_size_rejects(n: object) -> None:
    with pytest.raises(ValueError):
        check_chunk_size(n)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Chunker(chunk_size=n)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        stream_chunks([b"abc"], chunk_size=n)  # type: ignore[arg-type]


# -- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [[], [b""], [b"", bytearray(), memoryview(b"")]],
                         ids=["no-pieces", "one-empty", "several-empty"])
def test_empty_stream_yields_nothing(pieces: list[bytes]) -> None:
    assert stream_chunks(pieces) == []
    assert chunker_chunks(pieces) == []


@pytest.mark.parametrize("n", [1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS - 1])
def test_boundaries(n: int) -> None:
    data = random.Random(n).randbytes(n)  # noqa: S311 - test data
    for pieces in ([data], split(data, [1] * 5 + [CS - 3, 7])):
        assert_chunked(data, stream_chunks(pieces))
        assert_chunked(data, chunker_chunks(pieces))


def test_exact_multiple_has_no_short_chunk() -> None:
    data = bytes(2 * CS)
    assert [len(c) for c in stream_chunks([data[:100], data[100:]])] == [CS, CS]


def test_any_buffer_type_is_accepted() -> None:
    ints = array.array("I", range(CS // 4 + 10))  # itemsize 4: must be cut at byte granularity
    data = ints.tobytes()
    pieces: list[bytes | bytearray | memoryview] = [memoryview(ints), bytearray(b"xyz"), b"tail"]
    expect = data + b"xyztail"
    assert_chunked(expect, stream_chunks(pieces))
    assert_chunked(expect, chunker_chunks(pieces))


def test_chunker_reports_buffered_and_can_be_reused() -> None:
    chunker = Chunker(chunk_size=CS)
    assert chunker.chunk_size == CS and chunker.buffered == 0 and chunker.flush() is None
    assert chunker.feed(b"a" * 10) == [] and chunker.buffered == 10
    done = chunker.feed(b"b" * CS)
    assert [bytes(c) for c in done] == [b"a" * 10 + b"b" * (CS - 10)] and chunker.buffered == 10
    assert chunker.flush() == b"b" * 10 and chunker.buffered == 0
    assert chunker.feed(b"c" * 5) == [] and chunker.flush() == b"c" * 5


def test_handed_over_chunks_are_owned_by_the_caller() -> None:
    chunker = Chunker(chunk_size=CS)
    first = chunker.feed(bytes(CS) + b"next")[0]
    first[:4] = b"mine"
    first.extend(b"resizable")  # raises BufferError if the chunker still exported a view
    del first[10:]
    tail = chunker.flush()
    assert tail == b"next"
    tail.extend(b"!")


# -- random piece sizes --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(total=st.integers(0, 4 * CS + 17), seed=st.integers(0, 2**32),
       sizes=st.lists(st.one_of(st.integers(0, 64), st.integers(0, 3 * CS)), max_size=12))
def test_random_pieces_reassemble_exactly(total: int, seed: int, sizes: list[int]) -> None:
    data = random.Random(seed).randbytes(total)  # noqa: S311 - test data
    pieces = split(data, sizes)
    from_stream = stream_chunks(pieces)
    assert_chunked(data, from_stream)
    assert chunker_chunks(pieces) == from_stream


@settings(max_examples=10, deadline=None)
@given(chunk_mib=st.integers(1, 3), sizes=st.lists(st.integers(0, 5 * MiB), max_size=4))
def test_other_chunk_sizes(chunk_mib: int, sizes: list[int]) -> None:
    data = bytes(range(256)) * (sum(sizes) // 256 + 1)
    pieces = split(data, sizes)
    assert_chunked(data, stream_chunks(pieces, chunk_mib * MiB), chunk_mib * MiB)


# -- memory ------------------------------------------------------------------------------------


def test_memory_stays_about_one_chunk_for_a_huge_piece() -> None:
    piece = bytes(16 * CS)  # allocated before tracing: the caller already holds it

    async def consume() -> int:
        count = 0
        async for chunk in chunk_stream(_aiter([piece]), chunk_size=CS):
            count += len(chunk)
            del chunk
        return count

    tracemalloc.start()
    try:
        assert asyncio.run(consume()) == len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * CS, f"peak {peak} bytes for 1 MiB chunks"


def test_memory_stays_about_one_chunk_for_many_small_pieces() -> None:
    pieces = [bytes(4096)] * (8 * CS // 4096)
    chunker = Chunker(chunk_size=CS)
    tracemalloc.start()
    try:
        for piece in pieces:
            for chunk in chunker.iter_feed(piece):
                del chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * CS
