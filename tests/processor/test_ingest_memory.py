"""The write pipeline's memory is bounded by its settings, not by how far storage lags.

A unit test of `sessions.processor.ingest` with a slow in-memory stand-in for the
storage client (the end-to-end tests run the real one); it counts the chunk
buffers in use at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sessions.common.checksums import Checksum
from sessions.contract.storage import CommitOut
from sessions.core import ChunkSealer, sealed_length_bound
from sessions.core import leaf_hash as core_leaf_hash
from sessions.processor.buffers import BufferPool, ChunkBuffers
from sessions.processor.ingest import ingest
from sessions.processor.storage_client import ChunkRow, SessionRow

MIB = 1 << 20
SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
KEY = bytes(range(32))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingPool(BufferPool):
    """A pool that remembers the most buffers ever out at once."""

    def __init__(self, size: int, *, keep: int) -> None:
        super().__init__(size, keep=keep)
        self.out = self.most_out = 0

    def acquire(self, size: int | None = None) -> memoryview:
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        return super().acquire(size)

    def release(self, buf: memoryview) -> None:
        self.out -= 1
        super().release(buf)


class CountingBuffers(ChunkBuffers):
    def __post_init__(self) -> None:
        self.plain = CountingPool(self.chunk_size, keep=self.keep)
        self.sealed = CountingPool(sealed_length_bound(self.chunk_size), keep=self.keep)


class SlowStorage:
    """Stores PUTs after a delay, so sealing outruns storing; commits are instant."""

    def __init__(self) -> None:
        self.raw: dict[str, Any] = {
            "id": SID, "state": "recording", "offset": 0, "chunk_count": 0, "chunk_size": MIB,
            "zstd_level": 2, "labels": {}, "created_at": "2025-11-27T12:00:00.000000Z",
            "updated_at": "2025-11-27T12:00:00.000000Z", "retention_days": None,
            "sealed_bytes": 0, "format_version": 1, "root_hash": None, "wrapped_key": None}
        self.stored: dict[int, bytes] = {}

    async def put_chunk(self, sid: str, index: int, data: bytes | memoryview,
                        leaf_hash: bytes, *, checksum: Checksum | None = None,
                        lease_token: int | None = None) -> None:
        await asyncio.sleep(0.02)
        # What real storage checks the bytes by: their CRC-32C, as they are when sent.
        assert checksum == Checksum.of("crc32c", data), index
        assert leaf_hash == core_leaf_hash(bytes(data)), index
        self.stored[index] = bytes(data)

    async def commit(self, sid: str, *, expected_offset: int, chunks: list[ChunkRow],
                     lease_token: int | None = None) -> CommitOut:
        assert expected_offset == self.raw["offset"]
        self.raw["offset"] += sum(c.length for c in chunks)
        self.raw["chunk_count"] += len(chunks)
        return CommitOut(offset=self.raw["offset"], chunk_count=self.raw["chunk_count"])

    async def get_session(self, sid: str) -> SessionRow:
        return SessionRow.model_validate(self.raw)


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start:start + 64 * 1024]
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_sealed_chunks_do_not_pile_up_while_storage_lags() -> None:
    data = os.urandom(8 * MIB) + b"frame " * (20 * MIB // 6)  # 27 chunks of 1 MiB, and a tail
    count = -(-len(data) // MIB)
    storage = SlowStorage()
    buffers = CountingBuffers(MIB, keep=6)
    sealer = ChunkSealer(KEY, session_id=SID, zstd_level=2)
    with ThreadPoolExecutor(1) as executor, ThreadPoolExecutor(1) as hasher:
        done = await ingest(storage=storage, sealer=sealer,  # type: ignore[arg-type]
                            session=SessionRow.model_validate(storage.raw), source=_pieces(data),
                            checksum=None, declared_length=len(data), max_bytes=len(data),
                            executor=executor, hasher=hasher, parallel=1, inflight=2,
                            on_commit=lambda rows: None, buffers=buffers)
    assert done.offset == len(data) and done.chunk_count == len(storage.stored) == count == 28
    opened = b"".join(sealer.open(storage.stored[i], index=i) for i in range(count))
    assert opened == data
    assert isinstance(buffers.sealed, CountingPool) and isinstance(buffers.plain, CountingPool)
    # sealing 1 + handing on 1 + queued 1 + waiting for a PUT slot 1 + PUTs 2, whatever the size
    assert buffers.sealed.most_out <= 6, buffers.sealed.most_out
    assert buffers.plain.most_out <= 5, buffers.plain.most_out
    assert buffers.sealed.out == 0  # every sealed buffer came back


@pytest.mark.anyio
@pytest.mark.parametrize("permits", [None, (1, 1), (2, 3)])
async def test_a_checksummed_upload_uses_the_pools_and_stays_bounded(
        permits: tuple[int, int] | None) -> None:
    """With `Upload-Checksum` the plaintext buffers are pooled too (they used to be fresh
    per chunk) and go back only once sealed *and* hashed, so a lagging digest thread
    cannot pile them up either."""
    import time

    data = os.urandom(6 * MIB) + b"frame " * (10 * MIB // 6)
    storage = SlowStorage()
    buffers = CountingBuffers(MIB, keep=8)
    sealer = ChunkSealer(KEY, session_id=SID, zstd_level=2)
    checksum = Checksum.of("crc32c", data)  # the CLI's algorithm

    with ThreadPoolExecutor(1) as executor, ThreadPoolExecutor(1) as hasher:
        hasher.submit(time.sleep, 0.3)  # the digest thread starts late: chunks wait for it
        done = await ingest(storage=storage, sealer=sealer,  # type: ignore[arg-type]
                            session=SessionRow.model_validate(storage.raw), source=_pieces(data),
                            checksum=checksum, declared_length=len(data), max_bytes=len(data),
                            executor=executor, hasher=hasher, parallel=1, inflight=2,
                            on_commit=lambda rows: None, buffers=buffers, permits=permits)
    assert done.offset == len(data)
    count = -(-len(data) // MIB)
    assert b"".join(sealer.open(storage.stored[i], index=i) for i in range(count)) == data
    assert isinstance(buffers.sealed, CountingPool) and isinstance(buffers.plain, CountingPool)
    assert buffers.plain.most_out >= 1, "the checksummed path did not use the plaintext pool"
    most_plain, most_sealed = permits or (3, 4)
    assert buffers.plain.most_out <= most_plain, buffers.plain.most_out
    assert buffers.sealed.most_out <= most_sealed, buffers.sealed.most_out
    assert buffers.sealed.out == 0 and buffers.plain.out == 0  # every buffer came back


@pytest.mark.anyio
async def test_a_checksum_mismatch_commits_nothing_and_returns_the_buffers() -> None:
    from sessions.common.errors import ChecksumMismatch

    data = os.urandom(3 * MIB + 5)
    storage = SlowStorage()
    buffers = CountingBuffers(MIB, keep=8)
    sealer = ChunkSealer(KEY, session_id=SID, zstd_level=2)
    wrong = Checksum("crc32c", b"\x00\x00\x00\x00")
    with ThreadPoolExecutor(1) as executor, ThreadPoolExecutor(1) as hasher:
        with pytest.raises(ChecksumMismatch):
            await ingest(storage=storage, sealer=sealer,  # type: ignore[arg-type]
                         session=SessionRow.model_validate(storage.raw), source=_pieces(data),
                         checksum=wrong, declared_length=len(data), max_bytes=len(data),
                         executor=executor, hasher=hasher, parallel=1, inflight=2,
                         on_commit=lambda rows: None, buffers=buffers)
    assert storage.raw["offset"] == 0 and storage.raw["chunk_count"] == 0
    assert isinstance(buffers.plain, CountingPool) and buffers.plain.out == 0
