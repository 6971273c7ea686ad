"""Staged chunks that are never committed do not outlive their request, finalize or a crash.

Issue 12, defect 3: a rejected request's sealed chunks stayed on disk until the
session was deleted.  These tests drive the real storage app (real SQLite, real
chunk directory) and count the files it leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.config import Settings
from sessions.storage.errors import StagingDiscarded
from sessions.storage.main import create_app
from sessions.storage.sweep import OrphanSweeper

pytestmark = pytest.mark.anyio
API = "/internal/v1"
OCTET = {"Content-Type": "application/octet-stream"}
Body = Callable[..., dict[str, Any]]
Leaf = Callable[[bytes], bytes]
ErrorBody = Callable[[httpx.Response, int, str], dict[str, Any]]


@pytest.fixture
async def sid(client: httpx.AsyncClient, session_body: Body) -> str:
    resp = await client.post(f"{API}/sessions", json=session_body())
    assert resp.status_code == 201
    return str(resp.json()["id"])


def files(app: FastAPI, sid: str) -> list[str]:
    store: LocalChunkStore = app.state.resources.chunkstore
    return _names(store.session_dir(sid))


async def put(client: httpx.AsyncClient, sid: str, index: int, data: bytes,
              leaf_of: Leaf) -> None:
    resp = await client.put(f"{API}/sessions/{sid}/chunks/{index}", content=data,
                            headers={**OCTET, "X-Lucid-Leaf-Hash": leaf_of(data).hex()})
    assert resp.status_code == 201, resp.text


async def commit(client: httpx.AsyncClient, sid: str, leaf_of: Leaf, blobs: list[bytes]) -> None:
    chunks = [{"index": i, "offset": 10 * i, "length": 10, "sealed_length": len(b),
               "leaf_hash": leaf_of(b).hex(), "compressed": False} for i, b in enumerate(blobs)]
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": chunks})
    assert resp.status_code == 200, resp.text


async def test_discard_removes_staged_files_and_keeps_committed_ones(
        client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI) -> None:
    await put(client, sid, 0, b"zero", leaf_of)
    await commit(client, sid, leaf_of, [b"zero"])
    for i in (1, 2, 3):
        await put(client, sid, i, b"staged %d" % i, leaf_of)
    assert files(app, sid) == [f"{i:010d}.lcs" for i in range(4)]

    resp = await client.delete(f"{API}/sessions/{sid}/staged")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"discarded": [1, 2, 3]}
    assert files(app, sid) == ["0000000000.lcs"]
    assert (await client.get(f"{API}/sessions/{sid}/chunks/0")).content == b"zero"
    assert (await client.delete(f"{API}/sessions/{sid}/staged")).json() == {"discarded": []}


async def test_discard_checks_the_id(client: httpx.AsyncClient, error_body: ErrorBody) -> None:
    error_body(await client.delete(f"{API}/sessions/nope/staged"), 400, "invalid_id")
    error_body(await client.delete(f"{API}/sessions/{'0' * 26}/staged"), 404,
               "session_not_found")


async def test_a_put_in_flight_cannot_publish_after_a_discard(
        client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI) -> None:
    """A PUT whose request already failed (its body arrived, then the discard) leaves nothing."""
    streaming, release = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        streaming.set()
        yield b"late"
        await release.wait()

    late = asyncio.create_task(app.state.resources.service.put_chunk(
        sid, 1, slow_body(), leaf_hash=leaf_of(b"late"), content_length=None))
    await streaming.wait()
    assert (await client.delete(f"{API}/sessions/{sid}/staged")).json() == {"discarded": []}
    release.set()
    with pytest.raises(StagingDiscarded):
        await late
    assert files(app, sid) == []
    # A PUT that starts after the discard is not fenced: re-staging works as before.
    await put(client, sid, 1, b"again", leaf_of)
    assert files(app, sid) == ["0000000001.lcs"]


async def test_leaving_recording_discards_staged_files(
        client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI) -> None:
    await put(client, sid, 0, b"zero", leaf_of)
    await commit(client, sid, leaf_of, [b"zero"])
    await put(client, sid, 1, b"never committed", leaf_of)
    resp = await client.post(f"{API}/sessions/{sid}/state",
                             json={"to": "finalizing", "from": ["recording"]})
    assert resp.status_code == 200, resp.text
    assert files(app, sid) == ["0000000000.lcs"]


async def test_a_refused_transition_discards_nothing(
        client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI,
        error_body: ErrorBody) -> None:
    await put(client, sid, 0, b"staged", leaf_of)
    resp = await client.post(f"{API}/sessions/{sid}/state",
                             json={"to": "completed", "from": ["finalizing"]})
    error_body(resp, 409, "invalid_state")
    assert files(app, sid) == ["0000000000.lcs"]


async def test_start_up_sweeps_what_a_crash_left(settings: Settings, session_body: Body,
                                                 leaf_of: Leaf, service_token: str) -> None:
    """Staged files past chunk_count, and files of a deleted session, go when storage starts."""
    first = create_app(settings)
    async with first.router.lifespan_context(first), _client(first, service_token) as client:
        kept = str((await client.post(f"{API}/sessions", json=session_body())).json()["id"])
        gone = str((await client.post(f"{API}/sessions", json=session_body())).json()["id"])
        await put(client, kept, 0, b"zero", leaf_of)
        await commit(client, kept, leaf_of, [b"zero"])
        await put(client, kept, 1, b"one", leaf_of)
        await put(client, kept, 7, b"seven", leaf_of)
        assert (await client.delete(f"{API}/sessions/{gone}")).status_code == 204
        kept_dir = first.state.resources.chunkstore.session_dir(kept)
        gone_dir: Path = first.state.resources.chunkstore.session_dir(gone)
    # What a crash between the erase and the file removal, or a dead processor, leaves:
    _plant(gone_dir / "0000000000.lcs", b"sealed bytes of an erased session")
    stranger = kept_dir.parent.parent / "7Z" / ("7Z" + "0" * 24) / "0000000000.lcs"
    _plant(stranger, b"unknown")
    assert _names(kept_dir) == ["0000000000.lcs", "0000000001.lcs", "0000000007.lcs"]

    second = create_app(settings)
    async with second.router.lifespan_context(second), _client(second, service_token) as client:
        assert _names(kept_dir) == ["0000000000.lcs"]
        assert _names(gone_dir) == []
        assert _names(stranger.parent) == [stranger.name], "bytes of no known session are kept"
        assert (await client.get(f"{API}/sessions/{kept}/chunks/0")).content == b"zero"


async def test_a_periodic_pass_on_the_local_directory_keeps_young_staged_files(
        client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI) -> None:
    """While storage serves, only staged files older than the grace (by mtime) go."""
    await put(client, sid, 0, b"zero", leaf_of)
    await commit(client, sid, leaf_of, [b"zero"])
    await put(client, sid, 1, b"staged now", leaf_of)
    service = app.state.resources.service
    sweeper = OrphanSweeper(service)
    assert (await sweeper.run_pass()).kept_young == 1
    assert files(app, sid) == ["0000000000.lcs", "0000000001.lcs"]
    later = datetime.now(UTC) + service.grace + timedelta(seconds=1)
    assert (await sweeper.run_pass(now=later)).removed == 1
    assert files(app, sid) == ["0000000000.lcs"]
    assert (await client.get(f"{API}/sessions/{sid}/chunks/0")).content == b"zero"


def _plant(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(data)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _client(app: FastAPI, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://storage",
                             headers={"Authorization": f"Bearer {token}"})


class _DeletedWhileStaging(LocalChunkStore):
    """A chunk store whose session is deleted just as a PUT starts staging: the delete has
    erased the record, and something has taken the place of the session's directory, so
    creating the temp file fails as it does when a delete's rmtree wins that race."""

    def __init__(self, root: Path, meta: Any) -> None:
        super().__init__(root)
        self.meta = meta

    async def put(self, session_id: str, index: int, body: Any, **kwargs: Any) -> int:
        await self.meta.erase(session_id)
        return await super().put(session_id, index, body, **kwargs)


async def test_a_put_broken_off_by_a_delete_says_the_session_was_deleted(
        tmp_path: Path, meta: Any) -> None:
    """409 invalid_state, as for a PUT that came after the delete; not 503 (the store is fine)."""
    from sessions.common.errors import InvalidState
    from sessions.common.ids import new_session_id
    from sessions.core import leaf_hash
    from sessions.storage.errors import StorageUnavailable
    from sessions.storage.records import NewSession, WrappedKey
    from sessions.storage.service import StorageService

    async def body() -> AsyncIterator[bytes]:
        yield b"sealed"

    store = _DeletedWhileStaging(tmp_path, meta)
    service = StorageService(meta, store, max_chunk_bytes=1 << 20)
    sids = [new_session_id() for _ in range(2)]
    for sid in sids:
        await meta.create_session(NewSession(
            id=sid, wrapped_key=WrappedKey(key_id="k", blob=b"\1" * 60), chunk_size=1024,
            zstd_level=3, format_version=1))
        store.session_dir(sid).parent.mkdir(parents=True, exist_ok=True)
        store.session_dir(sid).write_bytes(b"")  # not a directory: creating the temp file fails
    with pytest.raises(InvalidState):
        await service.put_chunk(sids[0], 0, body(), leaf_hash=leaf_hash(b"sealed"),
                                content_length=6)
    # The same failure on a session nobody deleted is the store's: 503.
    plain = StorageService(meta, LocalChunkStore(tmp_path), max_chunk_bytes=1 << 20)
    with pytest.raises(StorageUnavailable):
        await plain.put_chunk(sids[1], 0, body(), leaf_hash=leaf_hash(b"sealed"),
                              content_length=6)
