"""LocalChunkStore: durable staged writes, leaf hash checks, size caps, safe paths."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sessions.common.errors import (
    BadRequest,
    ChunkNotFound,
    InvalidId,
    InvalidParameter,
    InvalidState,
    PayloadTooLarge,
    TruncatedBody,
)
from sessions.core import leaf_hash
from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.errors import LeafHashMismatch

pytestmark = pytest.mark.anyio
MAX = 8 * 1024 * 1024
ANY_LEAF = b"\0" * 32  # the local store finds a chunk by its index alone
MIB = 1 << 20


async def stream(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def never_read() -> AsyncIterator[bytes]:
    raise AssertionError("the body must not be read")
    yield b""  # pragma: no cover


def entries_under(root: Path) -> list[Path]:
    return list(root.rglob("*"))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_put_get_round_trip(chunkstore: LocalChunkStore, tmp_path: Path,
                                  ids: Callable[[], str]) -> None:
    sid = ids()
    data = os.urandom(2 * MIB + 12345)
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    size = await chunkstore.put(sid, 7, stream(pieces), expected_leaf_hash=leaf_hash(data),
                                max_bytes=MAX, expected_length=len(data))
    assert size == len(data)
    assert await chunkstore.get(sid, 7, leaf_hash=ANY_LEAF) == data
    # what GET .../chunks/{index} sends
    length, pieces = await chunkstore.stream(sid, 7, leaf_hash=ANY_LEAF)
    got = [piece async for piece in pieces]
    assert length == len(data) and b"".join(got) == data
    assert max(map(len, got)) <= 1 << 20  # read as sent, a piece at a time
    with pytest.raises(ChunkNotFound):
        await chunkstore.stream(sid, 8, leaf_hash=ANY_LEAF)
    assert (await chunkstore.stat(sid, 7, leaf_hash=ANY_LEAF)).size == len(data)  # type: ignore[union-attr]
    assert await chunkstore.exists(sid, 7) and not await chunkstore.exists(sid, 8)
    root = tmp_path / "chunkroot"
    assert files_under(root) == [f"chunks/{sid[:2]}/{sid}/0000000007.lcs"]
    assert (root / "chunks" / sid[:2] / sid / "0000000007.lcs").stat().st_mode & 0o077 == 0


def _cached_bytes(path: Path) -> int:
    """Bytes of `path` resident in the page cache, as util-linux's fincore reports them."""
    fincore = shutil.which("fincore") or "fincore"
    out = subprocess.run([fincore, "--bytes", "--noheadings", "--output", "RES", str(path)],  # noqa: S603 - our own path
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def _page_cache_can_be_dropped(where: Path) -> bool:
    """Whether this filesystem gives pages back on POSIX_FADV_DONTNEED (tmpfs does not)."""
    probe = where / "probe"
    probe.write_bytes(os.urandom(MIB))
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    dropped = _cached_bytes(probe) == 0
    probe.unlink()
    return dropped


@pytest.mark.perf  # reads the page cache's residency: a fact of the machine
async def test_chunk_files_do_not_stay_in_the_page_cache(chunkstore: LocalChunkStore,
                                                          tmp_path: Path,
                                                          ids: Callable[[], str]) -> None:
    """A chunk is written once and read rarely: its pages go back once it is durable,
    and again after a read, so a recorder never fills memory with its own archive."""
    if shutil.which("fincore") is None:
        pytest.skip("SKIPPED LOUDLY: util-linux fincore is not installed, so page-cache "
                    "residency cannot be observed")
    if not _page_cache_can_be_dropped(tmp_path):
        pytest.skip(f"SKIPPED LOUDLY: the filesystem under {tmp_path} keeps pages whatever "
                    "it is told (tmpfs?), so there is nothing to observe")
    sid = ids()
    data = os.urandom(3 * MIB)
    await chunkstore.put(sid, 0, stream([data]), expected_leaf_hash=leaf_hash(data),
                         max_bytes=MAX, expected_length=len(data))
    path = chunkstore.chunk_path(sid, 0)
    assert _cached_bytes(path) == 0
    assert await chunkstore.get(sid, 0, leaf_hash=ANY_LEAF) == data
    assert _cached_bytes(path) == 0


async def test_put_replaces_a_staged_chunk(chunkstore: LocalChunkStore,
                                           ids: Callable[[], str]) -> None:
    sid = ids()
    for data in (b"first", b"second"):
        await chunkstore.put(sid, 0, stream([data]), expected_leaf_hash=leaf_hash(data),
                             max_bytes=MAX)
    assert await chunkstore.get(sid, 0, leaf_hash=ANY_LEAF) == b"second"


async def test_leaf_mismatch_leaves_nothing(chunkstore: LocalChunkStore, tmp_path: Path,
                                            ids: Callable[[], str]) -> None:
    sid = ids()
    with pytest.raises(LeafHashMismatch):
        await chunkstore.put(sid, 0, stream([b"abc", b"def"]),
                             expected_leaf_hash=leaf_hash(b"abcdeg"), max_bytes=MAX)
    assert files_under(tmp_path / "chunkroot") == []
    with pytest.raises(ChunkNotFound):
        await chunkstore.get(sid, 0, leaf_hash=ANY_LEAF)


async def test_too_large_while_streaming(chunkstore: LocalChunkStore, tmp_path: Path,
                                         ids: Callable[[], str]) -> None:
    data = b"x" * 101
    with pytest.raises(PayloadTooLarge):
        await chunkstore.put(ids(), 0, stream([data[:60], data[60:]]),
                             expected_leaf_hash=leaf_hash(data), max_bytes=100)
    assert files_under(tmp_path / "chunkroot") == []


async def test_too_large_declared_is_refused_before_reading(chunkstore: LocalChunkStore,
                                                            ids: Callable[[], str]) -> None:
    with pytest.raises(PayloadTooLarge):
        await chunkstore.put(ids(), 0, never_read(), expected_leaf_hash=b"\0" * 32,
                             max_bytes=100, expected_length=101)


async def test_truncated_body(chunkstore: LocalChunkStore, tmp_path: Path,
                              ids: Callable[[], str]) -> None:
    with pytest.raises(TruncatedBody):
        await chunkstore.put(ids(), 0, stream([b"abc"]), expected_leaf_hash=leaf_hash(b"abc"),
                             max_bytes=MAX, expected_length=10)
    assert files_under(tmp_path / "chunkroot") == []


async def test_a_body_of_more_pieces_than_one_writev_takes_is_stored_whole(
        chunkstore: LocalChunkStore, ids: Callable[[], str]) -> None:
    sid = ids()
    pieces = [os.urandom(1 + i % 7) for i in range(2500)]  # > 1024 buffers, odd sizes
    data = b"".join(pieces)
    size = await chunkstore.put(sid, 0, stream(pieces), expected_leaf_hash=leaf_hash(data),
                                max_bytes=MAX, expected_length=len(data))
    assert size == len(data) and await chunkstore.get(sid, 0, leaf_hash=ANY_LEAF) == data


async def test_empty_body_is_refused(chunkstore: LocalChunkStore,
                                     ids: Callable[[], str]) -> None:
    with pytest.raises(BadRequest):
        await chunkstore.put(ids(), 0, stream([]), expected_leaf_hash=leaf_hash(b""),
                             max_bytes=MAX)


async def test_body_failing_midway_leaves_nothing(chunkstore: LocalChunkStore, tmp_path: Path,
                                                  ids: Callable[[], str]) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (MIB + 1)
        raise TruncatedBody()

    with pytest.raises(TruncatedBody):
        await chunkstore.put(ids(), 0, broken(), expected_leaf_hash=b"\0" * 32, max_bytes=MAX)
    assert files_under(tmp_path / "chunkroot") == []


async def test_guard_runs_around_publish(chunkstore: LocalChunkStore, tmp_path: Path,
                                         ids: Callable[[], str]) -> None:
    sid, calls = ids(), []

    @asynccontextmanager
    async def refuse() -> AsyncIterator[None]:
        calls.append("refuse")
        raise InvalidState()
        yield  # pragma: no cover

    with pytest.raises(InvalidState):
        await chunkstore.put(sid, 0, stream([b"abc"]), expected_leaf_hash=leaf_hash(b"abc"),
                             max_bytes=MAX, guard=refuse)
    assert calls == ["refuse"]
    assert files_under(tmp_path / "chunkroot") == []

    @asynccontextmanager
    async def allow() -> AsyncIterator[None]:
        calls.append("allow")
        yield

    await chunkstore.put(sid, 0, stream([b"abc"]), expected_leaf_hash=leaf_hash(b"abc"),
                         max_bytes=MAX, guard=allow)
    assert calls == ["refuse", "allow"]
    assert await chunkstore.get(sid, 0, leaf_hash=ANY_LEAF) == b"abc"


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "..", "01HZZZZZZZZZZZZZZZZZZZZZZ/",
                                    "01hzzzzzzzzzzzzzzzzzzzzzzz", "", "8" + "0" * 25])
async def test_malformed_ids_never_reach_a_path(chunkstore: LocalChunkStore, tmp_path: Path,
                                                bad_id: str) -> None:
    with pytest.raises(InvalidId):
        await chunkstore.put(bad_id, 0, never_read(), expected_leaf_hash=b"\0" * 32,
                             max_bytes=MAX)
    for call in (chunkstore.get(bad_id, 0, leaf_hash=ANY_LEAF),
                 chunkstore.stat(bad_id, 0, leaf_hash=ANY_LEAF), chunkstore.delete_session(bad_id)):
        with pytest.raises(InvalidId):
            await call
    assert entries_under(tmp_path) == []


@pytest.mark.parametrize("bad_index", [-1, 10**10, True])
async def test_bad_indexes_are_refused(chunkstore: LocalChunkStore, tmp_path: Path,
                                       ids: Callable[[], str], bad_index: int) -> None:
    with pytest.raises(InvalidParameter):
        await chunkstore.put(ids(), bad_index, never_read(), expected_leaf_hash=b"\0" * 32,
                             max_bytes=MAX)
    assert entries_under(tmp_path) == []


async def test_delete_session(chunkstore: LocalChunkStore, tmp_path: Path,
                              ids: Callable[[], str]) -> None:
    sid, other = ids(), ids()
    for s in (sid, other):
        for i in range(3):
            await chunkstore.put(s, i, stream([b"c%d" % i]),
                                 expected_leaf_hash=leaf_hash(b"c%d" % i), max_bytes=MAX)
    await chunkstore.delete_session(sid)
    await chunkstore.delete_session(sid)
    assert await chunkstore.stat(sid, 0, leaf_hash=ANY_LEAF) is None
    assert await chunkstore.get(other, 2, leaf_hash=ANY_LEAF) == b"c2"
    assert not (tmp_path / "chunkroot" / "chunks" / sid[:2] / sid).exists()


async def test_ping_creates_the_directory(chunkstore: LocalChunkStore, tmp_path: Path) -> None:
    await chunkstore.ping()
    assert (tmp_path / "chunkroot" / "chunks").is_dir()
    assert files_under(tmp_path / "chunkroot") == []


async def test_start_up_sweep_removes_only_temp_files_left_by_a_crash(
        chunkstore: LocalChunkStore, tmp_path: Path, ids: Callable[[], str]) -> None:
    sid = ids()
    data = os.urandom(1000)
    await chunkstore.put(sid, 0, stream([data]), expected_leaf_hash=leaf_hash(data),
                         max_bytes=MAX, expected_length=len(data))
    session_dir = tmp_path / "chunkroot" / "chunks" / sid[:2] / sid
    (session_dir / ".0000000001.abc123.tmp").write_bytes(b"half a chunk")
    (session_dir / ".0000000002.def456.tmp").write_bytes(b"")
    assert await chunkstore.sweep_temp_files() == 2
    assert files_under(tmp_path / "chunkroot") == [f"chunks/{sid[:2]}/{sid}/0000000000.lcs"]
    assert await chunkstore.get(sid, 0, leaf_hash=ANY_LEAF) == data
    assert await chunkstore.sweep_temp_files() == 0


async def test_a_put_cancelled_while_staging_leaves_no_temp_file(
        chunkstore: LocalChunkStore, tmp_path: Path, ids: Callable[[], str]) -> None:
    """The staging thread cannot be stopped; its temp file is removed when it finishes."""
    data = os.urandom(MAX)
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    root = tmp_path / "chunkroot"
    for _attempt in range(20):  # the thread may finish before the cancel lands; try again
        task = asyncio.ensure_future(chunkstore.put(ids(), 0, stream(pieces),
                                                    expected_leaf_hash=leaf_hash(data),
                                                    max_bytes=MAX))
        for _ in range(100_000):  # until the staging thread has made its temp file
            if task.done() or any(p.suffix == ".tmp" for p in root.rglob("*")):
                break
            await asyncio.sleep(0)
        if task.done():
            continue
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(400):
            if not [p for p in root.rglob("*") if p.is_file()]:
                break
            await asyncio.sleep(0.005)
        assert [p for p in root.rglob("*") if p.is_file()] == []
        return
    pytest.fail("could not cancel a put while it was staging in 20 attempts")


async def test_discard_from_removes_only_chunk_files_at_or_past_the_index(
        chunkstore: LocalChunkStore, ids: Callable[[], str]) -> None:
    sid = ids()
    for i in (0, 1, 2, 5):
        await chunkstore.put(sid, i, stream([b"c%d" % i]),
                             expected_leaf_hash=leaf_hash(b"c%d" % i), max_bytes=MAX)
    session_dir = chunkstore.session_dir(sid)
    _write(session_dir / ".0000000003.abc123.tmp", b"a PUT in flight owns this")
    _write(session_dir / "notes.txt", b"not a chunk")
    assert await chunkstore.discard_from(sid, 2) == [2, 5]
    assert _names(session_dir) == [".0000000003.abc123.tmp", "0000000000.lcs",
                                   "0000000001.lcs", "notes.txt"]
    assert await chunkstore.discard_from(sid, 2) == []
    assert await chunkstore.discard_from(ids(), 0) == []  # no directory: nothing to do
    with pytest.raises(InvalidParameter):
        await chunkstore.discard_from(sid, -1)
    with pytest.raises(InvalidId):
        await chunkstore.discard_from("../../etc", 0)


async def test_session_ids_lists_well_formed_session_directories(
        chunkstore: LocalChunkStore, tmp_path: Path, ids: Callable[[], str]) -> None:
    assert await chunkstore.session_ids() == []
    sids = sorted([ids(), ids()])
    for sid in sids:
        await chunkstore.put(sid, 0, stream([b"x"]), expected_leaf_hash=leaf_hash(b"x"),
                             max_bytes=MAX)
    chunks = tmp_path / "chunkroot" / "chunks"
    _write(chunks / "zz" / "not-an-id" / "0000000000.lcs", b"x")
    _write(chunks / "7Z" / ("00" + "0" * 24) / "0000000000.lcs", b"misplaced: wrong prefix")
    assert await chunkstore.session_ids() == sids


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())
