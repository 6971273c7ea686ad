"""The chunk store: one small async interface, and its local-directory implementation.

`ChunkStore` is all the routes know, so an S3-compatible store can drop in.
`LocalChunkStore` lays chunks out as `<root>/chunks/<id[0:2]>/<id>/<index:010d>.lcs`.
A chunk is written to a unique temp file beside its final name while it is checked
(`BodyCheck`), fsync'd, dropped from the page cache, renamed into place and its
directory fsync'd: a file at a final name is always whole.  Ids and indexes are
validated before any path is built from them.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from sessions.common.checksums import Checksum, Hasher, hasher
from sessions.common.errors import (
    BadRequest,
    ChunkNotFound,
    InvalidParameter,
    PayloadTooLarge,
    TruncatedBody,
)
from sessions.common.files import fsync_dir
from sessions.common.ids import check_session_id, is_session_id
from sessions.core import LEAF_PREFIX
from sessions.storage.errors import (
    ChunkChecksumMismatch,
    LeafHashMismatch,
    StorageFull,
    StorageUnavailable,
)
from sessions.storage.records import LEAF_HASH_SIZE, MAX_CHUNK_INDEX

T = TypeVar("T")
WRITE_BATCH = 1 << 20  # bytes gathered before one hop to a thread writes them
READ_PIECE = 1 << 20  # bytes of a chunk file read per hop to a thread when it is sent
CHUNK_SUFFIX = ".lcs"
TEMP_SUFFIX = ".tmp"

Guard = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class StoredChunk:
    """One stored chunk as its store lists it: what the orphan sweep judges it by."""

    index: int
    leaf_hash: bytes | None
    """The leaf hash its name holds (S3); None where a store keeps one chunk per index."""
    size: int
    modified: datetime
    """When it was written (UTC): the object's LastModified on S3, the file's mtime locally."""
    name: str
    """The store's own name of it (object key or file name), for `remove`."""


class BodyCheck:
    """The one integrity check of a chunk's bytes as they stream in, before any is kept.

    Against the caller's `Upload-Checksum` when it sent one (the processor sends
    crc32c), else against the chunk's RFC 9162 leaf hash (SHA-256 of 0x00 || bytes,
    section 2.1.1).  Both guard the same thing: bytes damaged between the processor and
    this store.  Neither authenticates anything (the caller states the leaf hash in the
    same request), so a CRC does that job at a twentieth of SHA-256's CPU; what proves
    a chunk is the processor's check of its leaf against the signed Merkle tree and of
    its AES-GCM tag on every read.  With a checksum the leaf hash is recorded as stated.
    """

    __slots__ = ("_hash", "_want", "_error")

    def __init__(self, leaf_hash: bytes, checksum: Checksum | None = None) -> None:
        if len(leaf_hash) != LEAF_HASH_SIZE:
            raise BadRequest("a leaf hash is 32 bytes")
        self._hash: Hasher
        self._error: type[ChunkChecksumMismatch | LeafHashMismatch]
        if checksum is None:
            self._hash, self._want = hashlib.sha256(LEAF_PREFIX), leaf_hash
            self._error = LeafHashMismatch
        else:
            self._hash, self._want = hasher(checksum.algorithm), checksum.digest
            self._error = ChunkChecksumMismatch

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)  # both kinds drop the GIL for large buffers

    def verify(self) -> None:
        """Raise LeafHashMismatch or ChunkChecksumMismatch unless the bytes had the digest."""
        if not hmac.compare_digest(self._hash.digest(), self._want):
            raise self._error()


class ChunkStore(Protocol):
    """Sealed chunk bytes by (session id, index, leaf hash); raises `ServiceError`s only.

    `shared` says whether other storage processes may write to the same store at once
    (S3); a store that is not shared (the local directory) belongs to one process.
    """

    shared: bool

    async def put(self, session_id: str, index: int, body: AsyncIterable[bytes], *,
                  expected_leaf_hash: bytes, max_bytes: int,
                  expected_length: int | None = None, guard: Guard | None = None,
                  checksum: Checksum | None = None) -> int: ...
    async def get(self, session_id: str, index: int, *, leaf_hash: bytes) -> bytes: ...
    async def stream(self, session_id: str, index: int, *,
                     leaf_hash: bytes) -> tuple[int, AsyncIterator[bytes]]: ...
    async def stream_range(self, session_id: str, index: int, *, leaf_hash: bytes, size: int,
                           offset: int, length: int) -> AsyncIterator[bytes]:
        """Return the chunk's stored bytes [offset, offset + length), in pieces read as sent.

        `size` is the chunk's stored length as `stat` gave it (the caller has looked the
        chunk up already, so a store need not ask again).  Requires 0 <= offset,
        1 <= length, offset + length <= size (InvalidParameter otherwise); ChunkNotFound
        if there is no chunk.
        """
        ...
    async def stat(self, session_id: str, index: int, *,
                   leaf_hash: bytes) -> StoredChunk | None: ...
    async def exists(self, session_id: str, index: int) -> bool: ...
    async def stored(self, session_id: str) -> list[StoredChunk]:
        """Return every chunk stored for the session, staged or committed, any order."""
    async def remove(self, session_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Remove these chunks (as `stored` listed them); absent is fine."""
    async def delete_session(self, session_id: str) -> None: ...
    async def discard_from(self, session_id: str, first: int) -> list[int]: ...
    async def session_ids(self, *, after: str = "", limit: int | None = None) -> list[str]:
        """Return up to limit (default all) ids > after of sessions with stored chunks, sorted."""
    async def ping(self) -> None: ...
    async def free_bytes(self) -> int:
        """Return the bytes an unprivileged writer may still write to the chunk volume."""


def check_span(offset: int, length: int, size: int) -> None:
    """Check 0 <= offset, 1 <= length and offset + length <= size; raise InvalidParameter."""
    if not (0 <= offset and 1 <= length and offset + length <= size):
        raise InvalidParameter(f"bytes {offset}+{length} are not within the {size} stored")


def check_index(index: int) -> int:
    """Return index if 0 <= index <= MAX_CHUNK_INDEX; raise InvalidParameter otherwise."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_CHUNK_INDEX:
        raise InvalidParameter("a chunk index is an integer from 0 to 9999999999")
    return index


async def _io(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking file I/O on a thread; the one place OSErrors become service errors."""
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull() from exc
        raise StorageUnavailable() from exc


class LocalChunkStore:
    """`ChunkStore` on a local directory tree under `root/chunks`.

    One process owns it (main.py holds `DirectoryLock` on the data dir): a re-stage
    replaces the index's file under the session's in-process lock, so there is one file
    per index and `leaf_hash` is not needed to find it.
    """

    shared = False

    def __init__(self, root: Path) -> None:
        self._chunks = root / "chunks"

    def session_dir(self, session_id: str) -> Path:
        """Return the directory of a session's chunks; raise InvalidId on a malformed id."""
        sid = check_session_id(session_id)
        return self._chunks / sid[:2] / sid

    def chunk_path(self, session_id: str, index: int) -> Path:
        """Return the final path of one chunk, after validating id and index."""
        return self.session_dir(session_id) / f"{check_index(index):010d}{CHUNK_SUFFIX}"

    async def put(self, session_id: str, index: int, body: AsyncIterable[bytes], *,
                  expected_leaf_hash: bytes, max_bytes: int,
                  expected_length: int | None = None, guard: Guard | None = None,
                  checksum: Checksum | None = None) -> int:
        """Store body as chunk `index`; return its length once it is durable at its final name.

        Preconditions: len(expected_leaf_hash) == 32; the body's length <= max_bytes and
        == expected_length when given; it passes `BodyCheck(expected_leaf_hash, checksum)`.
        `guard`, if given, is entered around the rename, so a caller can re-check that the
        chunk may still be written and hold off a concurrent commit.  On any failure
        nothing is left behind, temp file included.
        """
        final = self.chunk_path(session_id, index)
        check = BodyCheck(expected_leaf_hash, checksum)
        if expected_length is not None and expected_length > max_bytes:
            raise PayloadTooLarge(f"a sealed chunk is at most {max_bytes} bytes")
        staged = await _new_staged_file(final, check)
        try:
            size = await _receive(staged, body, max_bytes)
            _check_received(staged, size, expected_length)
            await _io(staged.sync)
            if guard is None:
                await _io(staged.publish)
            else:
                async with guard():
                    await _io(staged.publish)
        except BaseException:
            staged.discard()  # synchronous on purpose: it must run even when cancelled
            raise
        return size

    async def get(self, session_id: str, index: int, *, leaf_hash: bytes) -> bytes:
        """Return the stored bytes of a chunk; raise ChunkNotFound if its file is absent."""
        data = await _io(_read_file, self.chunk_path(session_id, index))
        if data is None:
            raise ChunkNotFound()
        return data

    async def stream(self, session_id: str, index: int, *,
                     leaf_hash: bytes) -> tuple[int, AsyncIterator[bytes]]:
        """Return a chunk file's length and its bytes in READ_PIECE pieces, read as sent.

        The file is opened now (ChunkNotFound if absent), so memory stays at a piece
        per reader whatever the chunk size.
        """
        f = await _io(_open_or_none, self.chunk_path(session_id, index))
        if f is None:
            raise ChunkNotFound()
        size = os.fstat(f.fileno()).st_size
        return size, _pieces(f, 0, size)

    async def stream_range(self, session_id: str, index: int, *, leaf_hash: bytes, size: int,
                           offset: int, length: int) -> AsyncIterator[bytes]:
        """Return the chunk file's bytes [offset, offset + length) in READ_PIECE pieces.

        Preconditions as `ChunkStore.stream_range`, checked before the file is opened (one
        file per index: leaf_hash names nothing here); the file is opened now, and read
        from `offset` (a seek, not a read of what comes before) as sent.
        """
        check_span(offset, length, size)
        f = await _io(_open_or_none, self.chunk_path(session_id, index))
        if f is None:
            raise ChunkNotFound()
        return _pieces(f, offset, length)

    async def stat(self, session_id: str, index: int, *,
                   leaf_hash: bytes) -> StoredChunk | None:
        """Return the chunk file at index (its leaf hash unknown: None), or None if absent."""
        return await _io(_stat, self.chunk_path(session_id, index), index)

    async def exists(self, session_id: str, index: int) -> bool:
        return await _io(_stat, self.chunk_path(session_id, index), index) is not None

    async def stored(self, session_id: str) -> list[StoredChunk]:
        """Return the session's chunk files at their final names (temp files are not listed)."""
        return await _io(_stored, self.session_dir(session_id))

    async def remove(self, session_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Remove these chunk files of the session; absent is fine."""
        await _io(_remove_files, self.session_dir(session_id), [c.name for c in chunks])

    async def delete_session(self, session_id: str) -> None:
        """Remove every chunk file of a session, staged or committed; absent is fine."""
        await _io(_remove_tree, self.session_dir(session_id))

    async def discard_from(self, session_id: str, first: int) -> list[int]:
        """Remove the chunk files of index >= first (staged, never committed); return their indexes.

        Temp files are left alone: each belongs to a PUT in flight, which removes its own.
        """
        if first < 0:
            raise InvalidParameter("the first index to discard must not be negative")
        return await _io(_remove_from, self.session_dir(session_id), first)

    async def session_ids(self, *, after: str = "", limit: int | None = None) -> list[str]:
        """Return up to limit (default all) ids > after of sessions that have a chunk
        directory, sorted."""
        ids = [sid for sid in await _io(_session_ids, self._chunks) if sid > after]
        return ids if limit is None else ids[:limit]

    async def ping(self) -> None:
        """Check that the chunk directory exists and is writable."""
        await _io(_probe, self._chunks)

    async def free_bytes(self) -> int:
        """Return the free bytes of the chunk volume available to this (unprivileged) user."""
        return await _io(_free_bytes, self._chunks)

    async def sweep_temp_files(self) -> int:
        """Remove temp files a crashed PUT left behind; return how many.

        Call at start-up only: the directory's lock keeps other processes out, so no PUT
        is in flight then.
        """
        return await _io(_sweep, self._chunks)


async def _pieces(f: BinaryIO, offset: int, length: int) -> AsyncIterator[bytes]:
    """Yield `length` bytes of f from `offset`, READ_PIECE at a time; close f however it ends."""
    try:
        if offset:
            await _io(f.seek, offset)
        left = length
        while left > 0 and (piece := await _io(f.read, min(READ_PIECE, left))):
            left -= len(piece)
            yield piece
        _drop_cached(f.fileno())
    finally:
        f.close()


async def _new_staged_file(final: Path, check: BodyCheck) -> _StagedFile:
    """Create the temp file on a worker thread; if the caller is cancelled meanwhile, the
    thread still finishes, and its temp file is removed then rather than left behind."""
    work = asyncio.ensure_future(_io(_StagedFile, final, check))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        work.add_done_callback(_discard_staged)
        raise


def _discard_staged(work: asyncio.Future[_StagedFile]) -> None:
    if not work.cancelled() and work.exception() is None:
        work.result().discard()


async def _receive(staged: _StagedFile, body: AsyncIterable[bytes], max_bytes: int) -> int:
    """Write body to staged in batches of >= WRITE_BATCH bytes; return its length."""
    pending: list[bytes] = []
    pending_size = total = 0
    async for piece in body:
        total += len(piece)
        if total > max_bytes:
            raise PayloadTooLarge(f"a sealed chunk is at most {max_bytes} bytes")
        pending.append(piece)
        pending_size += len(piece)
        if pending_size >= WRITE_BATCH:
            await _io(staged.write, b"".join(pending))
            pending, pending_size = [], 0
    if pending:
        await _io(staged.write, b"".join(pending))
    return total


def _check_received(staged: _StagedFile, size: int, expected_length: int | None) -> None:
    if expected_length is not None and size < expected_length:
        raise TruncatedBody()
    if size == 0:
        raise BadRequest("a sealed chunk is never empty")
    staged.check.verify()


class _StagedFile:
    """A temp file beside `final` that checks what it is given; used from worker threads."""

    def __init__(self, final: Path, check: BodyCheck) -> None:
        _make_dirs(final.parent)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.",
                                    suffix=TEMP_SUFFIX)
        self.final = final
        self.temp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.check = check

    def write(self, data: bytes) -> None:
        self.check.update(data)
        self._file.write(data)

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        _drop_cached(self._file.fileno())
        self._file.close()

    def publish(self) -> None:
        os.replace(self.temp, self.final)
        try:
            fsync_dir(self.final.parent)
        except OSError:
            # The rename is not durable, and the PUT fails: take the name back, so a chunk
            # never sits at its final name unless it was published.  Callers hold the
            # session's guard here, so no commit can have seen the file meanwhile.
            self.final.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        try:
            self.temp.unlink()
        except FileNotFoundError:  # already renamed into place, or removed with the session
            pass
        except OSError:
            pass


def _make_dirs(path: Path) -> None:
    """Create path and its missing parents, fsyncing each parent that gained an entry."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    fsync_dir(path.parent)


def _drop_cached(fd: int) -> None:
    """Let the kernel reuse the page cache a chunk file holds (its pages must be clean).

    A sealed chunk is written once and read rarely, so caching it only pushes out what
    is used again.  Handing the pages back also means the next chunk is written into
    recycled memory, far cheaper for the kernel than first-touching fresh memory (README,
    Performance, has the figures).
    """
    if hasattr(os, "posix_fadvise"):  # Linux, the services' platform; not macOS
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _open_or_none(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb", buffering=0)
    except FileNotFoundError:
        return None


def _read_file(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            data = f.read()
            _drop_cached(f.fileno())
            return data
    except FileNotFoundError:
        return None


def _stat(path: Path, index: int) -> StoredChunk | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return StoredChunk(index=index, leaf_hash=None, size=st.st_size,
                       modified=datetime.fromtimestamp(st.st_mtime, UTC), name=path.name)


def _chunk_names(session_dir: Path) -> list[tuple[int, str]]:
    """Return (index, name) of each final chunk file in session_dir (none if it is absent)."""
    try:
        names = os.listdir(session_dir)
    except FileNotFoundError:
        return []
    return [(index, name) for name in names if (index := _chunk_index(name)) is not None]


def _stored(session_dir: Path) -> list[StoredChunk]:
    return [chunk for index, name in _chunk_names(session_dir)
            if (chunk := _stat(session_dir / name, index)) is not None]


def _remove_files(session_dir: Path, names: list[str]) -> None:
    for name in names:
        if _chunk_index(name) is not None:  # final chunk names only, never a path
            (session_dir / name).unlink(missing_ok=True)
    if names and session_dir.is_dir():
        fsync_dir(session_dir)


def _remove_tree(path: Path) -> None:
    for _attempt in range(3):  # a PUT racing the delete may add a temp file meanwhile
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                continue
            raise
        break
    if path.parent.is_dir():
        fsync_dir(path.parent)


def _chunk_index(name: str) -> int | None:
    """Return the index a final chunk file name holds, or None for any other name."""
    stem, dot, suffix = name.partition(".")
    if dot and "." + suffix == CHUNK_SUFFIX and len(stem) == 10 and stem.isdigit():
        return int(stem)
    return None


def _remove_from(session_dir: Path, first: int) -> list[int]:
    doomed = sorted((index, name) for index, name in _chunk_names(session_dir) if index >= first)
    _remove_files(session_dir, [name for _, name in doomed])
    return [index for index, _ in doomed]


def _session_ids(chunks_dir: Path) -> list[str]:
    if not chunks_dir.is_dir():
        return []
    return sorted(path.name for path in chunks_dir.glob("*/*") if path.is_dir()
                  and is_session_id(path.name) and path.parent.name == path.name[:2])


def _probe(chunks_dir: Path) -> None:
    _make_dirs(chunks_dir)
    fd, name = tempfile.mkstemp(dir=chunks_dir, prefix=".ready.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.unlink(name)


def _sweep(chunks_dir: Path) -> int:
    if not chunks_dir.is_dir():
        return 0
    removed = 0
    for temp in chunks_dir.glob(f"*/*/*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed


def _free_bytes(chunks_dir: Path) -> int:
    """Return f_bavail * f_frsize of the nearest existing directory at or above chunks_dir."""
    path = chunks_dir
    while not path.exists() and path.parent != path:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
