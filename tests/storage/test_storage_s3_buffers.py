"""Storage's memory on S3: the chunk bodies gathered for their PUTs share one byte budget.

`ByteBudget` alone (waiting, order, a request larger than the budget), then the S3 store
on SeaweedFS under many concurrent PUTs: never more gathered at once than the budget,
every chunk stored; and the setting reaching the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessions.core import LEAF_PREFIX
from sessions.storage.config import Settings
from sessions.storage.main import create_app
from sessions.storage.s3store import DEFAULT_BUFFER_BYTES, ByteBudget, S3ChunkStore
from tests.storage.s3_server import REGION, S3Server, s3_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.anyio


async def test_byte_budget_makes_holders_wait_their_turn() -> None:
    budget = ByteBudget(10)
    order: list[str] = []
    release = asyncio.Event()

    async def holder(name: str, n: int) -> None:
        async with budget.hold(n):
            order.append(name)
            assert budget.held <= budget.limit
            await release.wait()

    first = asyncio.create_task(holder("a", 6))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(holder(n, k)) for n, k in (("b", 6), ("c", 1))]
    await asyncio.sleep(0.05)
    assert order == ["a"] and budget.held == 6  # b does not fit; c queues behind b
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["a", "b", "c"] and budget.held == 0


async def test_byte_budget_lets_an_oversized_request_take_all_of_it() -> None:
    budget = ByteBudget(10)
    async with budget.hold(25):
        assert budget.held == 10
    assert budget.held == 0
    with pytest.raises(ValueError, match="at least one byte"):
        ByteBudget(0)


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


async def test_concurrent_puts_never_gather_more_than_the_budget(
        s3_server: S3Server) -> None:  # noqa: F811 - the fixture
    chunk = 1 << 20
    bucket, _, prefix = s3_server.url().removeprefix("s3://").partition("/")
    store = S3ChunkStore(bucket=bucket, prefix=prefix, endpoint=s3_server.endpoint,
                         region=REGION, access_key_id=s3_server.access_key,
                         secret_access_key=s3_server.secret_key, buffer_bytes=2 * chunk)
    peak = 0
    sid = "01J0000000000000000000000" + "0"
    blobs = [os.urandom(chunk) for _ in range(8)]

    async def body(data: bytes) -> AsyncIterator[bytes]:
        nonlocal peak
        for at in range(0, len(data), 256 << 10):
            peak = max(peak, store.buffers.held)
            await asyncio.sleep(0.01)  # a slow sender: the others pile up meanwhile
            yield data[at:at + (256 << 10)]

    sizes = await asyncio.gather(*(
        store.put(sid, i, body(data), expected_leaf_hash=_leaf(data), max_bytes=2 * chunk,
                  expected_length=len(data)) for i, data in enumerate(blobs)))
    assert sizes == [chunk] * len(blobs)
    assert peak == 2 * chunk  # two bodies at once, the other six waited
    assert store.buffers.held == 0
    for i, data in enumerate(blobs):
        assert await store.get(sid, i, leaf_hash=_leaf(data)) == data
    await store.delete_session(sid)


async def test_the_setting_sizes_the_stores_budget(tmp_path: Path,
                                                   s3_server: S3Server) -> None:  # noqa: F811
    key, secret = s3_server.write_credentials(tmp_path / "secrets")
    token = tmp_path / "service.token"
    token.write_text("t" * 43 + "\n")
    common = {"mode": "local", "data_dir": tmp_path / "data", "service_token_file": token,
              "chunk_store_url": s3_server.url(), "s3_endpoint": s3_server.endpoint,
              "s3_access_key_file": key, "s3_secret_key_file": secret}
    for extra, limit in (({}, DEFAULT_BUFFER_BYTES), ({"s3_put_buffer_mb": 40}, 40 << 20)):
        app = create_app(Settings(**common, **extra))  # type: ignore[arg-type]
        async with app.router.lifespan_context(app):
            store = app.state.resources.chunkstore
            assert isinstance(store, S3ChunkStore)
            assert store.buffers.limit == limit
