"""Crypto-erasure on MongoDB holds against a restored backup once the master key rotates.

What the README promises: the wrapped key lingers in MongoDB's oplog and in backups
after a delete, so erasure rests on the master key.  A backup taken before the delete,
restored after a rotation whose retired master key was destroyed, must not make the
erased session readable again.  Until that rotation it would (not promised), and this
test shows that too, so the window the README names is real, not assumed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from sessions.storage.config import Settings as StorageSettings
from sessions.storage.dburl import parse
from sessions.storage.main import create_app as storage_app
from tests.mongo_server import MongoServer
from tests.processor.test_key_rotation import MIB, Node, record

pytestmark = pytest.mark.anyio


@pytest.fixture
async def mongo_node(tmp_path: Path, mongo_server: MongoServer) -> AsyncIterator[Node]:
    n = Node(tmp_path)
    n.url = mongo_server.url()  # type: ignore[attr-defined]
    settings = StorageSettings(mode="production", data_dir=tmp_path / "storage",
                               service_token_file=n.token, metadata_url=n.url)  # type: ignore[attr-defined]
    n.storage = storage_app(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(n.storage.router.lifespan_context(n.storage))
        for _ in range(300):  # until storage has migrated the database
            if n.storage.state.resources.readiness.reason is None:
                break
            await asyncio.sleep(0.1)
        yield n


async def _sessions(url: str) -> list[dict[str, Any]]:
    parsed = parse(url)
    async with AsyncMongoClient(parsed.url) as client:
        return await client[parsed.database].sessions.find().to_list()


async def _restore(url: str, backup: list[dict[str, Any]]) -> None:
    """Put the sessions collection back as it was in backup (chunk files: see the test)."""
    parsed = parse(url)
    async with AsyncMongoClient(parsed.url) as client:
        await client[parsed.database].sessions.delete_many({})
        await client[parsed.database].sessions.insert_many(backup)


async def test_a_restored_backup_does_not_revive_an_erased_session(mongo_node: Node) -> None:
    url: str = mongo_node.url  # type: ignore[attr-defined]
    chunks = mongo_node.root / "storage" / "storage" / "chunks"
    data = os.urandom(MIB + 77)
    async with mongo_node.processor("k1") as k1:
        sid = await record(k1, data)
        backup = await _sessions(url)  # a backup of the node, taken while the session lived
        shutil.copytree(chunks, mongo_node.root / "backup-chunks")
        assert (await k1.delete(f"/sessions/{sid}")).status_code == 204
        assert (await k1.get(f"/sessions/{sid}/replay")).status_code == 409
    live = {d["_id"]: d for d in await _sessions(url)}
    assert live[sid]["key_blob"] is None and live[sid]["state"] == "deleted"

    # Not promised: before the next rotation, the backup plus the current master key revive it.
    await _restore(url, backup)
    shutil.rmtree(chunks)
    shutil.copytree(mongo_node.root / "backup-chunks", chunks)
    async with mongo_node.processor("k1") as k1:
        assert (await k1.get(f"/sessions/{sid}/replay")).content == data
    await _restore(url, list(live.values()))

    async with mongo_node.processor("k2", "k1") as rotating:  # rotate, then destroy k1
        assert (await rotating.post("/keys/rotate")).status_code == 200
    mongo_node.keys["k1"].unlink()

    await _restore(url, backup)  # the old backup comes back after the rotation
    shutil.rmtree(chunks)
    shutil.copytree(mongo_node.root / "backup-chunks", chunks)
    async with mongo_node.processor("k2") as k2:
        r = await k2.get(f"/sessions/{sid}/replay")
        assert r.status_code == 409 and r.json()["error"] == "key_unavailable"
