"""Master key rotation: every session key is rewrapped, no chunk byte changes.

Real storage (SQLite, chunk files) and real processors, wired in one process
through httpx's ASGI transport; each "restart" of the processor is a new app
built with other key files, as an operator would restart it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sessions.common.secrets import new_token, write_new_secret
from sessions.core import MasterKey, NoteSigner
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

MIB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Node:
    """One storage and the key files a processor may be started with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = root / "service.token"
        write_new_secret(self.token, new_token())
        self.signing = root / "signing.key"
        write_new_secret(self.signing, NoteSigner.generate("lucid-rotation").key_text())
        self.keys: dict[str, Path] = {}
        for name in ("k1", "k2"):
            self.keys[name] = root / f"{name}.key"
            write_new_secret(self.keys[name], MasterKey.generate().to_text())
        self.storage: FastAPI | None = None

    @asynccontextmanager
    async def processor(self, master: str, *previous: str) -> AsyncIterator[httpx.AsyncClient]:
        """Yield a client of a processor holding `master` (and `previous`) master keys."""
        assert self.storage is not None
        settings = ProcessorSettings(
            mode="production", data_dir=self.root / "processor",
            service_token_file=self.token, master_key_file=self.keys[master],
            previous_master_key_files=",".join(str(self.keys[p]) for p in previous) or None,
            signing_key_file=self.signing, storage_url="http://storage", chunk_size=MIB)
        app = processor_app(settings, storage_transport=httpx.ASGITransport(app=self.storage))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://processor/internal/v1",
                headers={"Authorization": f"Bearer {self.token.read_text().strip()}"},
                timeout=30) as client:
            yield client

    def chunk_files(self) -> dict[str, str]:
        chunks = self.root / "storage" / "storage" / "chunks"
        return {str(p.relative_to(chunks)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(chunks.rglob("*.lcs"))}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path)
    settings = StorageSettings(mode="production", data_dir=tmp_path / "storage",
                               service_token_file=n.token)
    n.storage = storage_app(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(n.storage.router.lifespan_context(n.storage))
        yield n


async def record(client: httpx.AsyncClient, data: bytes) -> str:
    sid: str = (await client.post("/sessions", json={"labels": {"user": "alice"}})).json()["id"]
    r = await client.patch(f"/sessions/{sid}/upload", content=data,
                           headers={"Upload-Offset": "0",
                                    "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 200, r.text
    return sid


@pytest.mark.anyio
async def test_rotation_rewraps_every_key_and_touches_no_chunk(node: Node) -> None:
    data = {name: os.urandom(2 * MIB + 1234) for name in ("a", "b")}
    async with node.processor("k1") as k1:
        finished = await record(k1, data["a"])
        assert (await k1.post(f"/sessions/{finished}/finalize")).status_code == 200
        recording = await record(k1, data["b"])
        erased = await record(k1, b"short-lived")
        assert (await k1.delete(f"/sessions/{erased}")).status_code == 204
    before = node.chunk_files()
    assert len(before) == 6

    async with node.processor("k2") as k2_only:  # the new key alone cannot open old sessions
        r = await k2_only.get(f"/sessions/{finished}/replay")
        assert r.status_code == 409 and r.json()["error"] == "key_unavailable"

    async with node.processor("k2", "k1") as rotating:
        report = (await rotating.post("/keys/rotate")).json()
        assert report == {"master_key_id": MasterKey.from_file(node.keys["k2"]).key_id,
                          "rotated": 2, "already_current": 0, "erased": 1, "period_wrapped": 0,
                          "unknown_key_ids": [], "unreadable_session_ids": []}
        again = (await rotating.post("/keys/rotate")).json()
        assert (again["rotated"], again["already_current"]) == (0, 2)

    assert node.chunk_files() == before  # rotation never touches chunk data

    async with node.processor("k2") as k2:  # the old key file can now be destroyed
        for sid, name in ((finished, "a"), (recording, "b")):
            assert (await k2.get(f"/sessions/{sid}/replay")).content == data[name]
        report = (await k2.post(f"/sessions/{finished}/verify")).json()
        assert report["ok"] is True and report["checked"] == 3
        # and the recording session can go on under the new key
        r = await k2.patch(f"/sessions/{recording}/upload", content=b"more",
                           headers={"Upload-Offset": str(len(data["b"])),
                                    "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 200, r.text

    async with node.processor("k1") as k1_only:  # the retired key no longer opens anything
        r = await k1_only.get(f"/sessions/{finished}/replay")
        assert r.status_code == 409 and r.json()["error"] == "key_unavailable"


@pytest.mark.anyio
async def test_a_key_of_an_unknown_master_is_reported_not_rotated(node: Node) -> None:
    async with node.processor("k1") as k1:
        await record(k1, b"x" * 1000)
    async with node.processor("k2") as k2:  # k1 not offered as a previous key
        report = (await k2.post("/keys/rotate")).json()
    assert report["rotated"] == 0
    assert report["unknown_key_ids"] == [MasterKey.from_file(node.keys["k1"]).key_id]


@pytest.mark.anyio
async def test_a_damaged_wrapped_key_is_reported_not_a_500(node: Node) -> None:
    """Storage rows with a malformed wrapped key, or one that does not open under the key
    it names, are listed and left alone; the other sessions are still rotated."""
    k1_id = MasterKey.from_file(node.keys["k1"]).key_id
    async with node.processor("k1") as k1:
        good = await record(k1, b"y" * 1000)
    damaged = {"01JDZ0Q3W6Y8E2V7K4N5P9R1ST": {"key_id": "not-a-key-id", "blob": "AAAA"},
               "01JDZ0Q3W6Y8E2V7K4N5P9R1SV": {"key_id": k1_id,
                                              "blob": base64.b64encode(os.urandom(60)).decode()}}
    assert node.storage is not None
    async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=node.storage),
            base_url="http://storage/internal/v1",
            headers={"Authorization": f"Bearer {node.token.read_text().strip()}"}) as storage:
        for sid, wrapped in damaged.items():
            r = await storage.post("/sessions", json={
                "id": sid, "labels": {}, "retention_days": None, "wrapped_key": wrapped,
                "chunk_size": MIB, "zstd_level": 3, "format_version": 1})
            assert r.status_code == 201, r.text
    async with node.processor("k2", "k1") as k2:
        r = await k2.post("/keys/rotate")
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["rotated"] == 1
        assert sorted(report["unreadable_session_ids"]) == sorted(damaged)
        assert (await k2.get(f"/sessions/{good}/replay")).content == b"y" * 1000


@pytest.mark.anyio
async def test_two_rotations_at_once_both_succeed(node: Node) -> None:
    """A rotation whose caller went away runs on (the crash suite kills the gateway
    mid-rotation); the operator's next one meets keys it already rewrapped, which
    storage's compare-and-set refuses: counted as current, not a 409 `conflict`."""
    async with node.processor("k1") as k1:
        sids = [await record(k1, b"z" * 100) for _ in range(4)]
    async with node.processor("k2", "k1") as rotating:
        first, second = await asyncio.gather(rotating.post("/keys/rotate"),
                                             rotating.post("/keys/rotate"))
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    reports = [first.json(), second.json()]
    assert sum(r["rotated"] for r in reports) == len(sids)
    assert all(r["rotated"] + r["already_current"] == len(sids) for r in reports), reports
    async with node.processor("k2") as k2:
        for sid in sids:
            assert (await k2.get(f"/sessions/{sid}/replay")).content == b"z" * 100
