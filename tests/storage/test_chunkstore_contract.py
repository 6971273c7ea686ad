"""The chunk-store contract: the local directory and S3 behave alike, on two S3 servers
started on loopback: SeaweedFS (tests/storage/s3_server.py) and Ceph's radosgw
(tests/storage/rgw_server.py).

Every test here runs against the local directory and both servers; what only one store
has (file layout, fsync, temp files) stays in test_storage_chunkstore.py.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import obstore
import pytest

from sessions.client.launcher import free_port
from sessions.common.checksums import Checksum
from sessions.common.errors import (
    BadRequest,
    ChunkNotFound,
    InvalidId,
    InvalidParameter,
    PayloadTooLarge,
    TruncatedBody,
)
from sessions.core import leaf_hash
from sessions.storage.chunkstore import ChunkStore, LocalChunkStore
from sessions.storage.errors import (
    ChunkChecksumMismatch,
    ChunkCommitted,
    LeafHashMismatch,
    StorageUnavailable,
)
from sessions.storage.s3store import UNMETERED, S3ChunkStore
from tests.storage.rgw_server import RgwServer
from tests.storage.s3_server import REGION, S3Server, s3_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.anyio
MAX = 4 * 1024 * 1024


# The S3 servers by fixture name (each is started once per test session, on first use).
SERVERS = {"seaweedfs": "s3_server", "rgw": "rgw_server"}


def s3_store(server: S3Server | RgwServer, url: str | None = None) -> S3ChunkStore:
    bucket, _, prefix = (url or server.url()).removeprefix("s3://").partition("/")
    return S3ChunkStore(bucket=bucket, prefix=prefix, endpoint=server.endpoint, region=REGION,
                        access_key_id=server.access_key, secret_access_key=server.secret_key)


@pytest.fixture(params=list(SERVERS))
def any_s3(request: pytest.FixtureRequest) -> S3Server | RgwServer:
    """Each S3 server in turn."""
    server: S3Server | RgwServer = request.getfixturevalue(SERVERS[request.param])
    return server


@pytest.fixture(params=["local", *SERVERS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkStore:
    if request.param == "local":
        return LocalChunkStore(tmp_path / "chunkroot")
    return s3_store(request.getfixturevalue(SERVERS[request.param]))


async def stream(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def never_read() -> AsyncIterator[bytes]:
    raise AssertionError("the body must not be read")
    yield b""  # pragma: no cover


async def put(store: ChunkStore, sid: str, index: int, data: bytes, **kw: object) -> int:
    return await store.put(sid, index, stream([data]), expected_leaf_hash=leaf_hash(data),
                           max_bytes=MAX, **kw)  # type: ignore[arg-type]


async def test_put_get_stream_size_round_trip(store: ChunkStore, ids: Callable[[], str]) -> None:
    sid = ids()
    data = os.urandom(2 * 1024 * 1024 + 12345)
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    size = await store.put(sid, 7, stream(pieces), expected_leaf_hash=leaf_hash(data),
                           max_bytes=MAX, expected_length=len(data))
    assert size == len(data)
    leaf = leaf_hash(data)
    assert await store.get(sid, 7, leaf_hash=leaf) == data
    length, body = await store.stream(sid, 7, leaf_hash=leaf)
    assert length == len(data) and b"".join([p async for p in body]) == data
    stat = await store.stat(sid, 7, leaf_hash=leaf)
    assert stat is not None and stat.size == len(data) and await store.exists(sid, 7)
    assert abs((stat.modified - datetime.now(UTC)).total_seconds()) < 60
    assert await store.stat(sid, 6, leaf_hash=leaf) is None and not await store.exists(sid, 6)


async def collect(pieces: AsyncIterator[bytes]) -> bytes:
    return b"".join([p async for p in pieces])


async def test_a_range_of_a_chunk_streams_exactly_those_bytes(
        store: ChunkStore, ids: Callable[[], str]) -> None:
    """Ranged reads cross the stores' read pieces (1 MiB local, 256 KiB S3) and both ends."""
    sid = ids()
    data = os.urandom(2 * 1024 * 1024 + 777)
    await put(store, sid, 2, data)
    leaf, size = leaf_hash(data), len(data)
    for offset, length in [(0, 1), (0, size), (1, size - 1), (size - 1, 1), (123, 1 << 20),
                           (300_000, 1_500_000), (size - 5000, 5000)]:
        got = await collect(await store.stream_range(sid, 2, leaf_hash=leaf, size=size,
                                                     offset=offset, length=length))
        assert got == data[offset:offset + length], (offset, length)
    for offset, length in [(-1, 2), (0, 0), (size, 1), (size - 1, 2), (0, size + 1)]:
        with pytest.raises(InvalidParameter):
            await store.stream_range(sid, 2, leaf_hash=leaf, size=size, offset=offset,
                                     length=length)
    with pytest.raises(ChunkNotFound):
        await store.stream_range(sid, 3, leaf_hash=leaf, size=size, offset=0, length=1)


async def test_a_missing_chunk_is_not_found(store: ChunkStore, ids: Callable[[], str]) -> None:
    sid = ids()
    with pytest.raises(ChunkNotFound):
        await store.get(sid, 0, leaf_hash=leaf_hash(b"x"))
    with pytest.raises(ChunkNotFound):
        await store.stream(sid, 0, leaf_hash=leaf_hash(b"x"))
    assert await store.stat(sid, 0, leaf_hash=leaf_hash(b"x")) is None


async def test_restaging_an_uncommitted_index_is_read_by_its_leaf_hash(
        store: ChunkStore, ids: Callable[[], str]) -> None:
    """The resealed retry is what its leaf hash reads (S3 keeps the first attempt beside it
    until a discard or the sweep: a PUT never removes an object)."""
    sid = ids()
    retry = leaf_hash(b"the resealed retry")
    await put(store, sid, 3, b"first attempt")
    await put(store, sid, 3, b"the resealed retry")  # a new nonce: another leaf hash
    assert await store.get(sid, 3, leaf_hash=retry) == b"the resealed retry"
    stat = await store.stat(sid, 3, leaf_hash=retry)
    assert stat is not None and stat.size == len(b"the resealed retry")
    await put(store, sid, 3, b"the resealed retry")  # the same bytes again: idempotent
    assert await store.get(sid, 3, leaf_hash=retry) == b"the resealed retry"
    assert len(await store.stored(sid)) == (2 if store.shared else 1)
    assert await store.discard_from(sid, 0) == [3]
    assert not await store.exists(sid, 3)


async def test_a_refusing_guard_keeps_the_chunk_that_was_there(
        store: ChunkStore, ids: Callable[[], str]) -> None:
    """A committed index: the service's guard refuses, and the stored chunk stays as it was."""
    sid = ids()
    await put(store, sid, 0, b"committed bytes")

    @asynccontextmanager
    async def committed() -> AsyncIterator[None]:
        raise ChunkCommitted()
        yield  # pragma: no cover

    for data in (b"another attempt", b"committed bytes"):
        with pytest.raises(ChunkCommitted):
            await put(store, sid, 0, data, guard=committed)
        assert await store.get(sid, 0, leaf_hash=leaf_hash(b"committed bytes")) == (
            b"committed bytes")
    assert await store.discard_from(sid, 0) == [0]


async def test_bad_bodies_store_nothing(store: ChunkStore, ids: Callable[[], str]) -> None:
    sid = ids()
    with pytest.raises(LeafHashMismatch):
        await store.put(sid, 0, stream([b"abc"]), expected_leaf_hash=leaf_hash(b"abd"),
                        max_bytes=MAX)
    with pytest.raises(PayloadTooLarge):
        await store.put(sid, 0, stream([b"x" * 11]), expected_leaf_hash=leaf_hash(b"x" * 11),
                        max_bytes=10)
    with pytest.raises(PayloadTooLarge):
        await store.put(sid, 0, never_read(), expected_leaf_hash=b"\0" * 32, max_bytes=10,
                        expected_length=11)
    with pytest.raises(TruncatedBody):
        await store.put(sid, 0, stream([b"abc"]), expected_leaf_hash=leaf_hash(b"abc"),
                        max_bytes=MAX, expected_length=10)
    with pytest.raises(BadRequest):
        await store.put(sid, 0, stream([]), expected_leaf_hash=leaf_hash(b""), max_bytes=MAX)
    with pytest.raises(BadRequest):
        await store.put(sid, 0, never_read(), expected_leaf_hash=b"\0" * 31, max_bytes=MAX)
    assert not await store.exists(sid, 0)


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256"])
async def test_a_checksum_checks_the_body_instead_of_the_leaf_hash(
        store: ChunkStore, ids: Callable[[], str], algorithm: str) -> None:
    """With a checksum, the body is checked against it (the leaf hash is recorded as
    stated, not recomputed); a body that does not match it is refused and nothing stays."""
    sid = ids()
    body = [b"sealed ", os.urandom(300_000), b" bytes"]
    data = b"".join(body)
    with pytest.raises(ChunkChecksumMismatch):
        await store.put(sid, 0, stream(body), expected_leaf_hash=leaf_hash(data),
                        max_bytes=MAX, checksum=Checksum.of(algorithm, data[:-1] + b"S"))
    assert not await store.exists(sid, 0)
    assert not await store.stored(sid)
    stated = leaf_hash(b"what the processor named it")
    assert await store.put(sid, 0, stream(body), expected_leaf_hash=stated, max_bytes=MAX,
                           checksum=Checksum.of(algorithm, data)) == len(data)
    assert await store.get(sid, 0, leaf_hash=stated) == data


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "..", "01HZZZZZZZZZZZZZZZZZZZZZZ/",
                                    "01hzzzzzzzzzzzzzzzzzzzzzzz", ""])
async def test_malformed_ids_and_indexes_are_refused(store: ChunkStore, bad_id: str,
                                                     ids: Callable[[], str]) -> None:
    with pytest.raises(InvalidId):
        await store.put(bad_id, 0, never_read(), expected_leaf_hash=b"\0" * 32, max_bytes=MAX)
    for call in (store.delete_session, store.stored):
        with pytest.raises(InvalidId):
            await call(bad_id)
    with pytest.raises(InvalidId):
        await store.discard_from(bad_id, 0)
    for read in (store.get, store.stat):
        with pytest.raises(InvalidId):
            await read(bad_id, 0, leaf_hash=b"\0" * 32)
    for bad_index in (-1, 10**10):
        with pytest.raises(InvalidParameter):
            await store.put(ids(), bad_index, never_read(), expected_leaf_hash=b"\0" * 32,
                            max_bytes=MAX)


async def test_discard_from_and_delete_session(store: ChunkStore,
                                               ids: Callable[[], str]) -> None:
    sid, other = ids(), ids()
    for s in (sid, other):
        for i in (0, 1, 2, 5):
            await put(store, s, i, b"c%d" % i)
    assert await store.discard_from(sid, 2) == [2, 5]
    assert await store.discard_from(sid, 2) == []
    assert [await store.exists(sid, i) for i in (0, 1, 2, 5)] == [True, True, False, False]
    with pytest.raises(InvalidParameter):
        await store.discard_from(sid, -1)
    assert await store.discard_from(ids(), 0) == []
    await store.delete_session(sid)
    await store.delete_session(sid)
    assert not await store.exists(sid, 0) and not await store.exists(sid, 1)
    assert await store.get(other, 5, leaf_hash=leaf_hash(b"c5")) == b"c5"
    assert await store.session_ids() == [other]


async def test_many_chunks_are_deleted_in_batches(store: ChunkStore,
                                                  ids: Callable[[], str]) -> None:
    sid = ids()
    await asyncio.gather(*(put(store, sid, i, b"%d" % i) for i in range(120)))
    assert await store.discard_from(sid, 20) == list(range(20, 120))
    await store.delete_session(sid)
    assert await store.session_ids() == []


async def test_session_ids_lists_sessions_with_chunks(store: ChunkStore,
                                                      ids: Callable[[], str]) -> None:
    assert await store.session_ids() == []
    sids = sorted([ids(), ids()])
    for sid in sids:
        await put(store, sid, 0, b"x")
    assert await store.session_ids() == sids
    await store.ping()
    assert await store.free_bytes() > MAX


async def test_s3_conditional_put_keeps_an_object_immutable(any_s3: S3Server | RgwServer,
                                                            ids: Callable[[], str]) -> None:
    """The object of a chunk is created with If-None-Match: *; the server refuses a second."""
    url = any_s3.url()
    store = s3_store(any_s3, url)
    sid = ids()
    await put(store, sid, 0, b"sealed")
    raw = any_s3.store()
    key = f"{url.split('/', 3)[3]}/{sid}/0000000000/{leaf_hash(b'sealed').hex()}.lcs"
    with pytest.raises(obstore.exceptions.AlreadyExistsError):
        await obstore.put_async(raw, key, b"forged", mode="create")
    assert await store.get(sid, 0, leaf_hash=leaf_hash(b"sealed")) == b"sealed"
    assert await store.free_bytes() == UNMETERED


async def test_s3_deletes_page_through_listings_and_batches(any_s3: S3Server | RgwServer,
                                                           ids: Callable[[], str]) -> None:
    """More objects than one S3 listing page (1000 keys) and one DeleteObjects batch (1000):
    discard_from and delete_session still find and remove every one of them."""
    url = any_s3.url()
    store, raw, prefix = s3_store(any_s3, url), any_s3.store(), url.split("/", 3)[3]
    sid, count = ids(), 2100
    at_once = asyncio.Semaphore(32)

    async def object_of(index: int) -> None:
        data = b"%d" % index
        async with at_once:
            await obstore.put_async(raw, f"{prefix}/{sid}/{index:010d}/"
                                         f"{leaf_hash(data).hex()}.lcs", data)

    await asyncio.gather(*(object_of(i) for i in range(count)))
    last = b"%d" % (count - 1)
    assert await store.get(sid, count - 1, leaf_hash=leaf_hash(last)) == last
    assert await store.discard_from(sid, 50) == list(range(50, count))
    left = [o["path"] for o in await obstore.list(raw, f"{prefix}/{sid}").collect_async()]
    assert len(left) == 50
    await store.delete_session(sid)
    assert await obstore.list(raw, f"{prefix}/{sid}").collect_async() == []


async def test_s3_unreachable_is_a_503(ids: Callable[[], str]) -> None:
    """Nothing listening: every call is StorageUnavailable, never an obstore error."""
    store = S3ChunkStore(bucket="b", prefix="p", endpoint=f"http://127.0.0.1:{free_port()}",
                         region=REGION, access_key_id="k",
                         secret_access_key=secrets.token_urlsafe(16))
    sid = ids()
    calls: list[Callable[[], Awaitable[object]]] = [
        store.ping, store.session_ids, lambda: store.get(sid, 0, leaf_hash=b"\0" * 32),
        lambda: store.stat(sid, 0, leaf_hash=b"\0" * 32), lambda: store.stored(sid),
        lambda: store.delete_session(sid), lambda: store.discard_from(sid, 0),
        lambda: put(store, sid, 0, b"x")]
    for call in calls:
        with pytest.raises(StorageUnavailable):
            await call()


async def test_s3_a_refused_attempt_leaves_no_object_and_a_put_removes_none(
        any_s3: S3Server | RgwServer, ids: Callable[[], str]) -> None:
    """A PUT touches no object but its own: the one a commit names stays whatever runs."""
    url = any_s3.url()
    store, raw, prefix = s3_store(any_s3, url), any_s3.store(), url.split("/", 3)[3]
    sid = ids()
    await put(store, sid, 0, b"staged")
    await put(store, sid, 0, b"restaged")

    @asynccontextmanager
    async def refuse() -> AsyncIterator[None]:
        raise ChunkCommitted()
        yield  # pragma: no cover

    with pytest.raises(ChunkCommitted):
        await put(store, sid, 0, b"refused", guard=refuse)
    keys = [o["path"] for o in await obstore.list(raw, f"{prefix}/{sid}").collect_async()]
    assert sorted(keys) == sorted(f"{prefix}/{sid}/0000000000/{leaf_hash(d).hex()}.lcs"
                                  for d in (b"staged", b"restaged"))


async def test_stored_lists_and_remove_removes_what_was_listed(
        store: ChunkStore, ids: Callable[[], str]) -> None:
    sid, other = ids(), ids()
    for i in (0, 1, 4):
        await put(store, sid, i, b"c%d" % i)
    await put(store, other, 0, b"o")
    listed = sorted(await store.stored(sid), key=lambda c: c.index)
    assert [(c.index, c.size) for c in listed] == [(0, 2), (1, 2), (4, 2)]
    assert all(c.leaf_hash == (leaf_hash(b"c%d" % c.index) if store.shared else None)
               for c in listed)
    await store.remove(sid, [listed[1]])
    await store.remove(sid, [listed[1]])  # absent is fine
    assert sorted(c.index for c in await store.stored(sid)) == [0, 4]
    assert await store.exists(other, 0)
    assert await store.stored(ids()) == []
