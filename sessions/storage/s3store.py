"""The chunk store on S3-compatible object storage (AWS S3, SeaweedFS, Ceph RGW, MinIO).

One object per sealed chunk, keyed `<prefix>/<session id>/<index:010d>/<leaf hash hex>.lcs`,
so a resealed retry at the same index (new nonce, new leaf hash) is a different object.
The client is `obstore` (Rust's object_store: async, typed, one wheel with no
dependency tree to resolve).

Several storage processes may share one bucket and prefix (README, "Several storage
processes"), so nothing here relies on the caller's per-process lock for safety.  A PUT
creates its object with a conditional PUT (`If-None-Match: *`) and never removes another
object: a re-staged index simply holds two objects, and a stale PUT that publishes late
(in another process, after a commit or a discard) adds one more.  Every read and every
commit check names the object by its leaf hash (the committed one, from the chunk
row), so an object no commit names is never read and never replaces anything; the
orphan sweep (`sweep.py`) removes it once it is older than the grace.  The object is
content-addressed, so a conditional PUT that finds it present (412) finds the very same
bytes; it is then written again, plainly, so that its LastModified is fresh for the
commit that follows (`stat` reports the age a commit is judged by).

The body is gathered in memory (at most `max_bytes`, one sealed chunk; one copy, checked
as it arrives: `BodyCheck`) before anything is uploaded: no object is ever visible with
bytes other than those the processor sealed and named.  The bodies gathered at once
share one byte budget (`buffer_bytes`, `LUCID_S3_PUT_BUFFER_MB`): a PUT that would pass
it waits, before reading its body, for earlier ones to finish, so storage's memory stays
bounded however many uploads run.
Object storage has no free-space figure, so `free_bytes` reports `UNMETERED` and the
free-space watermark never refuses a chunk on S3.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, TypeVar

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError
from obstore.store import S3Store

from sessions.common.checksums import Checksum
from sessions.common.errors import (
    BadRequest,
    ChunkNotFound,
    InvalidParameter,
    PayloadTooLarge,
    ServiceError,
    TruncatedBody,
)
from sessions.common.ids import check_session_id, is_session_id
from sessions.storage.chunkstore import (
    CHUNK_SUFFIX,
    BodyCheck,
    Guard,
    StoredChunk,
    check_index,
    check_span,
)
from sessions.storage.config import S3Location
from sessions.storage.errors import StorageUnavailable

if TYPE_CHECKING:
    from obstore import GetResult, ObjectMeta

T = TypeVar("T")
MISSING = (NotFoundError, FileNotFoundError)  # a 404: obstore raises either, by call
log = logging.getLogger("sessions.storage.s3")

UNMETERED = 1 << 62  # free_bytes on object storage: no volume to run out of
TIMEOUT = timedelta(seconds=10)  # one request; a stopped server fails fast with a 503
RETRIES = 2  # obstore retries idempotent requests and 5xx answers this many times
DEFAULT_BUFFER_BYTES = 17 << 20  # chunk bodies gathered at once: two sealed 8 MiB chunks
# Pieces of a GET handed to Python: obstore joins the HTTP frames up to this size, and
# larger joins cost resident memory for every stream read at once (README: memory on S3).
S3_READ_PIECE = 256 << 10


def open_s3_store(location: S3Location, *,
                  buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> S3ChunkStore:
    """Return the chunk store of an S3 location."""
    return S3ChunkStore(bucket=location.bucket, prefix=location.prefix,
                        endpoint=location.endpoint, region=location.region,
                        access_key_id=location.access_key_id,
                        secret_access_key=location.secret_access_key,
                        root_certificate=location.root_certificate, buffer_bytes=buffer_bytes)


class ByteBudget:
    """Bytes held at once by its holders; `hold(n)` waits until n more fit (first come,
    first served).  A request for more than the whole budget takes all of it."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a byte budget is at least one byte")
        self.limit = limit
        self.held = 0
        self._turn = asyncio.Lock()  # the head of the queue waits here for room
        self._freed = asyncio.Event()

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(max(n, 0), self.limit)
        async with self._turn:
            while self.held + n > self.limit:
                self._freed.clear()
                await self._freed.wait()
            self.held += n
        try:
            yield
        finally:
            self.held -= n
            self._freed.set()


async def _s3(call: Awaitable[T]) -> T:
    """Await one object-store call; the one place its errors (bar NotFound) become 503s.

    The exception's text names the endpoint and key, so only its type is logged.
    """
    try:
        return await call
    except (*MISSING, AlreadyExistsError, StopAsyncIteration, ServiceError):
        raise
    except Exception as exc:
        log.warning("object store request failed: %s", type(exc).__name__)
        raise StorageUnavailable() from None


def _index_of(path: str) -> int | None:
    """Return the index a chunk object's path `<sid>/<index:010d>/<64 hex>.lcs` holds, else None."""
    named = _named(path)
    return None if named is None else named[0]


def _named(path: str) -> tuple[int, bytes] | None:
    """Return (index, leaf hash) of a chunk object's path, or None for any other key."""
    parts = path.split("/")
    if len(parts) < 2:
        return None
    stem, name = parts[-2], parts[-1]
    digest = name.removesuffix(CHUNK_SUFFIX)
    if (len(stem) == 10 and stem.isdigit() and name.endswith(CHUNK_SUFFIX)
            and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return int(stem), bytes.fromhex(digest)
    return None


def _stored(meta: ObjectMeta) -> StoredChunk | None:
    named = _named(meta["path"])
    if named is None:
        return None
    modified = meta["last_modified"]
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return StoredChunk(index=named[0], leaf_hash=named[1], size=meta["size"],
                       modified=modified, name=meta["path"])


class S3ChunkStore:
    """`ChunkStore` on one bucket and key prefix of an S3-compatible object store."""

    shared = True

    def __init__(self, *, bucket: str, prefix: str, endpoint: str | None, region: str,
                 access_key_id: str, secret_access_key: str,
                 root_certificate: str | None = None,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        options: dict[str, object] = {"timeout": TIMEOUT, "connect_timeout": TIMEOUT}
        if endpoint is not None and endpoint.startswith("http://"):
            options["allow_http"] = True
        if root_certificate is not None:  # https: trusted besides the system's CAs
            options["root_certificate"] = root_certificate
        self._store = S3Store(
            bucket, prefix=prefix.strip("/") or None, endpoint=endpoint, region=region,
            access_key_id=access_key_id, secret_access_key=secret_access_key,
            virtual_hosted_style_request=False,
            client_options=options,  # type: ignore[arg-type]
            retry_config={"max_retries": RETRIES, "retry_timeout": TIMEOUT * 2})
        self.buffers = ByteBudget(buffer_bytes)

    @staticmethod
    def _key(session_id: str, index: int, leaf_hash: bytes) -> str:
        """Return a chunk object's key (below the prefix), after validating id and index."""
        return (f"{check_session_id(session_id)}/{check_index(index):010d}/"
                f"{leaf_hash.hex()}{CHUNK_SUFFIX}")

    async def _objects(self, session_id: str, index: int | None = None) -> list[ObjectMeta]:
        """Return the chunk objects of a session (of one index if given), any order."""
        prefix = check_session_id(session_id)  # object_store prefixes are whole segments
        if index is not None:
            prefix += f"/{check_index(index):010d}"
        found: list[ObjectMeta] = []
        async for batch in obstore.list(self._store, prefix):  # noqa: B020 - paging
            found.extend(batch)
        return found

    async def _any(self, session_id: str, index: int) -> bool:
        """Return whether any object of chunk `index` exists (staged or committed)."""
        try:
            objects = await _s3(self._objects(session_id, index))
        except NotFoundError:
            return False
        return any(_index_of(o["path"]) == index for o in objects)

    async def put(self, session_id: str, index: int, body: AsyncIterable[bytes], *,
                  expected_leaf_hash: bytes, max_bytes: int,
                  expected_length: int | None = None, guard: Guard | None = None,
                  checksum: Checksum | None = None) -> int:
        """Store body as chunk `index`; return its length once its object is written.

        Preconditions as `LocalChunkStore.put`.  `guard`, if given, is entered around
        creating the object; no other object is touched.  On any failure the object this
        call created is removed again.  The body's bytes count against the
        store's buffer budget from before it is read until its object is written.
        """
        check = BodyCheck(expected_leaf_hash, checksum)
        key = self._key(session_id, index, expected_leaf_hash)
        if expected_length is not None and expected_length > max_bytes:
            raise PayloadTooLarge(f"a sealed chunk is at most {max_bytes} bytes")
        async with self.buffers.hold(max_bytes if expected_length is None else expected_length):
            data = await _receive(body, check, max_bytes, expected_length or 0)
            if expected_length is not None and len(data) < expected_length:
                raise TruncatedBody()
            if not data:
                raise BadRequest("a sealed chunk is never empty")
            check.verify()
            if guard is None:
                await self._publish(key, data)
            else:
                async with guard():
                    await self._publish(key, data)
            return len(data)

    async def _publish(self, key: str, data: bytearray) -> None:
        created = False
        try:
            try:
                await _s3(obstore.put_async(self._store, key, data, mode="create"))
                created = True
            except AlreadyExistsError:
                # Content-addressed: the very same bytes are there.  Written again so its
                # LastModified is fresh: the sweep and the commit judge an object by its age.
                await _s3(obstore.put_async(self._store, key, data))
        except BaseException:
            if created:
                await _forget(self._store, [key])
            raise

    async def get(self, session_id: str, index: int, *, leaf_hash: bytes) -> bytes:
        """Return the bytes of the object of (index, leaf_hash); ChunkNotFound if it is absent."""
        try:
            result = await _s3(obstore.get_async(self._store,
                                                 self._key(session_id, index, leaf_hash)))
            return bytes(await _s3(result.bytes_async()))
        except MISSING:
            raise ChunkNotFound() from None

    async def stream(self, session_id: str, index: int, *,
                     leaf_hash: bytes) -> tuple[int, AsyncIterator[bytes]]:
        """Return the length of the object of (index, leaf_hash) and its bytes in pieces of
        about S3_READ_PIECE, read as sent; ChunkNotFound if it is absent."""
        try:
            result = await _s3(obstore.get_async(self._store,
                                                 self._key(session_id, index, leaf_hash)))
        except MISSING:
            raise ChunkNotFound() from None
        return result.meta["size"], _pieces(result)

    async def stream_range(self, session_id: str, index: int, *, leaf_hash: bytes, size: int,
                           offset: int, length: int) -> AsyncIterator[bytes]:
        """Return the bytes [offset, offset + length) of the object of (index, leaf_hash) by
        one ranged GET (no HEAD: `size` is the caller's `stat`), read as sent.

        Preconditions as `ChunkStore.stream_range`, checked before any request.  A server
        that answers another range than asked (an object shorter than `size` says) is a
        503, never a splice.
        """
        check_span(offset, length, size)
        span = (offset, offset + length)
        try:
            result = await _s3(obstore.get_async(self._store,
                                                 self._key(session_id, index, leaf_hash),
                                                 options={"range": span}))
        except MISSING:
            raise ChunkNotFound() from None
        if tuple(result.range) != span:
            log.warning("object store answered bytes %s for a GET of %s", result.range, span)
            raise StorageUnavailable()
        return _pieces(result)

    async def stat(self, session_id: str, index: int, *,
                   leaf_hash: bytes) -> StoredChunk | None:
        """Return the object of (index, leaf_hash) as listed (size, LastModified), or None."""
        try:
            meta = await _s3(obstore.head_async(self._store,
                                                self._key(session_id, index, leaf_hash)))
        except MISSING:
            return None
        return _stored(meta)

    async def exists(self, session_id: str, index: int) -> bool:
        """Return whether chunk `index` has any object, whatever its leaf hash."""
        return await self._any(session_id, index)

    async def stored(self, session_id: str) -> list[StoredChunk]:
        """Return every chunk object of the session (staged, committed or stray), any order."""
        try:
            objects = await _s3(self._objects(session_id))
        except NotFoundError:
            return []
        return [chunk for o in objects if (chunk := _stored(o)) is not None]

    async def remove(self, session_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Delete these objects of the session in batches; absent is fine."""
        prefix = check_session_id(session_id) + "/"
        paths = [c.name for c in chunks if c.name.startswith(prefix)]
        if paths:
            await _s3(obstore.delete_async(self._store, paths))

    async def delete_session(self, session_id: str) -> None:
        """Remove every object of a session, staged or committed, in batches; absent is fine."""
        try:
            paths = [o["path"] for o in await _s3(self._objects(session_id))]
        except NotFoundError:
            return
        if paths:
            await _s3(obstore.delete_async(self._store, paths))

    async def discard_from(self, session_id: str, first: int) -> list[int]:
        """Remove the objects of index >= first (staged, never committed); return their indexes."""
        if first < 0:
            raise InvalidParameter("the first index to discard must not be negative")
        try:
            objects = await _s3(self._objects(session_id))
        except NotFoundError:
            return []
        doomed: dict[str, int] = {}
        for o in objects:
            index = _index_of(o["path"])
            if index is not None and index >= first:
                doomed[o["path"]] = index
        if doomed:
            await _s3(obstore.delete_async(self._store, list(doomed)))
        return sorted(set(doomed.values()))

    async def session_ids(self, *, after: str = "", limit: int | None = None) -> list[str]:
        """Return up to limit (default all) ids > after of the sessions that have an object
        under the prefix, sorted.

        Some servers (SeaweedFS) keep listing a "directory" after its last object went,
        so each candidate is checked for an object (one request each, up to limit found).
        """
        listing = await _s3(obstore.list_with_delimiter_async(self._store))
        names = sorted(name for p in listing["common_prefixes"]
                       if is_session_id(name := p.rstrip("/").rsplit("/", 1)[-1])
                       and name > after)
        found: list[str] = []
        for name in names:
            if limit is not None and len(found) >= limit:
                break
            if await _s3(self._has_objects(name)):
                found.append(name)
        return found

    async def _has_objects(self, prefix: str) -> bool:
        async for batch in obstore.list(self._store, prefix, chunk_size=1):  # noqa: B020
            if batch:
                return True
        return False

    async def ping(self) -> None:
        """Check that the bucket answers to these credentials (a listing of an empty prefix)."""
        try:
            await _s3(obstore.list_with_delimiter_async(self._store, ".ping/"))
        except NotFoundError:
            raise StorageUnavailable() from None

    async def free_bytes(self) -> int:
        """Return UNMETERED: object storage has no free-space figure to watch."""
        return UNMETERED


async def _pieces(result: GetResult) -> AsyncIterator[bytes]:
    """Yield a GET's body in pieces of about S3_READ_PIECE, as they arrive."""
    stream = result.stream(min_chunk_size=S3_READ_PIECE)
    while True:
        try:
            piece = await _s3(stream.__anext__())
        except StopAsyncIteration:
            return
        yield bytes(piece)


async def _receive(body: AsyncIterable[bytes], check: BodyCheck, max_bytes: int,
                   size_hint: int) -> bytearray:
    """Return the whole body, fed to `check`; raise PayloadTooLarge once it passes max_bytes.

    The body goes into one buffer of `size_hint` bytes (the announced length), grown
    only if more arrives: no joined or reallocated copy.
    """
    data = bytearray(size_hint)
    filled = 0
    async for piece in body:
        end = filled + len(piece)
        if end > max_bytes:
            raise PayloadTooLarge(f"a sealed chunk is at most {max_bytes} bytes")
        data[filled:min(end, size_hint)] = piece  # in place while within the hint
        filled = end
        check.update(piece)
    del data[filled:]
    return data


async def _forget(store: S3Store, paths: Sequence[str]) -> None:
    """Delete objects on a failure path; a failure here is logged, not raised."""
    try:
        await obstore.delete_async(store, list(paths))
    except Exception as exc:
        log.warning("could not remove an unpublished chunk object: %s", type(exc).__name__)
