"""The MongoDB backend's own promises: indexes and schema at start, two processes racing,
redacted URLs, and what storage does when the database is down or goes away."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from sessions.client.launcher import REPO
from sessions.common.secrets import ConfigError
from sessions.storage.config import Settings
from sessions.storage.dburl import parse
from sessions.storage.main import create_app
from sessions.storage.metastore import open_metastore
from sessions.storage.mongo_backend import SCHEMA_VERSION
from sessions.storage.records import NewSession
from tests.mongo_server import MongoServer
from tests.storage.conftest import SERVICE_TOKEN, leaf
from tests.storage.mongo_writer import race

pytestmark = pytest.mark.anyio
API = "/internal/v1"
MakeSession = Callable[..., NewSession]
PASSWORD = "pw-" + "Z9" * 12


async def test_indexes_and_schema_version_at_start(mongo_server: MongoServer) -> None:
    url = parse(mongo_server.url())
    store = await open_metastore(url)
    await store.close()
    async with AsyncMongoClient(url.url) as client:
        db = client[url.database]
        assert (await db.meta.find_one({"_id": "schema"}))["version"] == SCHEMA_VERSION
        chunk_indexes = {i["name"]: i async for i in await db.chunks.list_indexes()}
        assert chunk_indexes["session_index"]["unique"] is True
        assert dict(chunk_indexes["session_index"]["key"]) == {"s": 1, "i": 1}
        names = {i["name"] async for i in await db.sessions.list_indexes()}
        assert {"_id_", "by_state", "by_label", "by_created", "by_state_created"} <= names
        await db.meta.update_one({"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION + 1}})
    again = await open_metastore(url, prepare=False)
    with pytest.raises(ConfigError):
        await again.prepare()
    await again.close()


async def test_two_processes_appending_stay_contiguous(mongo_server: MongoServer,
                                                       new_session: MakeSession) -> None:
    url = mongo_server.url()
    store = await open_metastore(parse(url))
    rec = await store.create_session(new_session())
    rounds = 12
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.storage.mongo_writer", url, rec.id, "2", str(rounds),
        cwd=REPO, stdout=subprocess.PIPE)
    assert other.stdout is not None
    ours = await race(store, rec.id, 1, rounds)
    theirs = int((await other.stdout.read()).decode())
    assert await other.wait() == 0
    after = await store.get_session(rec.id)
    stored = await store.list_chunks(rec.id, limit=100)
    await store.close()
    assert ours + theirs == after.chunk_count == len(stored) >= rounds
    assert [c.index for c in stored] == list(range(len(stored)))
    assert [c.offset for c in stored] == [7 * i for i in range(len(stored))]
    assert after.offset == 7 * len(stored)


# -- configuration and redaction -----------------------------------------------------------------


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    token_file = tmp_path / "service.token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    return Settings(mode="local", data_dir=tmp_path / "data", service_token_file=token_file,
                    **extra)


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    """A server of this test's own, not started: the test stops and starts it."""
    server = MongoServer(tmp_path / "own-mongo")
    if not server.can_restart:
        pytest.skip("LUCID_TEST_MONGODB_URL is set: this test must stop and restart its "
                    "server, which it can only do with the bundled SecantusDB")
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
async def mongo_app(own_mongo: MongoServer, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """The storage app on own_mongo's URL (user and password from files), server not started."""
    monkeypatch.setattr("sessions.storage.readiness.MAX_RETRY", 1.0)  # keep the test short
    url_file = tmp_path / "metadata.url"
    url_file.write_text(own_mongo.url("lucid").replace("://", "://lucid@") + "\n")
    password_file = tmp_path / "metadata.password"
    password_file.write_text(PASSWORD + "\n")
    app = create_app(_settings(tmp_path, metadata_url_file=url_file,
                               metadata_password_file=password_file))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def mongo_client(mongo_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mongo_app),
                                 base_url="http://storage",
                                 headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as c:
        yield c


async def _wait_ready(client: httpx.AsyncClient, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (resp := await client.get("/ready")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, resp.text
        await asyncio.sleep(0.2)


def test_a_password_in_the_url_variable_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, metadata_url=f"mongodb://lucid:{PASSWORD}@db:27017/lucid")
    with pytest.raises(ConfigError) as info:
        settings.metadata()
    assert PASSWORD not in str(info.value)
    bad = _settings(tmp_path, metadata_url=f"mongodb://lucid:{PASSWORD}@db:27017/")
    with pytest.raises(ConfigError) as info:
        bad.metadata()
    assert PASSWORD not in str(info.value)


async def test_down_at_start_then_ready_without_a_restart(
        own_mongo: MongoServer, mongo_client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture, session_body: Callable[..., dict[str, Any]]) -> None:
    caplog.set_level(logging.INFO)
    resp = await mongo_client.get("/ready")
    assert resp.status_code == 503
    body = resp.json()
    assert body["error"] == "not_ready"
    assert "mongodb://***@127.0.0.1" in body["detail"] and PASSWORD not in resp.text
    resp = await mongo_client.post(f"{API}/sessions", json=session_body())
    assert resp.status_code == 503 and resp.json()["error"] == "storage_unavailable"
    assert PASSWORD not in resp.text
    for _ in range(300):  # a first attempt has failed, and storage said why
        if "unreachable" in (await mongo_client.get("/ready")).text:
            break
        await asyncio.sleep(0.1)
    own_mongo.start()  # the database comes up; storage was never restarted
    own_mongo.create_user("lucid", "lucid", PASSWORD)
    await _wait_ready(mongo_client)
    resp = await mongo_client.post(f"{API}/sessions", json=session_body())
    assert resp.status_code == 201, resp.text
    assert "unreachable" in caplog.text and PASSWORD not in caplog.text


async def test_lost_mid_upload_fails_503_and_resumes_by_itself(
        own_mongo: MongoServer, mongo_client: httpx.AsyncClient,
        session_body: Callable[..., dict[str, Any]]) -> None:
    own_mongo.start()
    own_mongo.create_user("lucid", "lucid", PASSWORD)
    await _wait_ready(mongo_client)
    sid = (await mongo_client.post(f"{API}/sessions", json=session_body())).json()["id"]
    blobs = [b"chunk-zero", b"chunk-one"]
    records = []
    for i, data in enumerate(blobs):
        resp = await mongo_client.put(
            f"{API}/sessions/{sid}/chunks/{i}", content=data,
            headers={"Content-Type": "application/octet-stream",
                     "X-Lucid-Leaf-Hash": leaf(data).hex()})
        assert resp.status_code == 201, resp.text
        records.append({"index": i, "offset": 100 * i, "length": 100,
                        "sealed_length": len(data), "leaf_hash": leaf(data).hex(),
                        "compressed": False})
    resp = await mongo_client.post(f"{API}/sessions/{sid}/commit",
                                   json={"expected_offset": 0, "chunks": records[:1]})
    assert resp.json() == {"offset": 100, "chunk_count": 1}

    own_mongo.kill()  # the database dies between two commits
    resp = await mongo_client.post(f"{API}/sessions/{sid}/commit",
                                   json={"expected_offset": 100, "chunks": records[1:]})
    assert resp.status_code == 503 and resp.json()["error"] == "storage_unavailable"
    assert PASSWORD not in resp.text
    ready = await mongo_client.get("/ready")
    assert ready.status_code == 503 and PASSWORD not in ready.text
    assert "metadata store mongodb://***@127.0.0.1" in ready.json()["detail"]

    own_mongo.start()  # it comes back; storage carries on by itself
    await _wait_ready(mongo_client)
    got = (await mongo_client.get(f"{API}/sessions/{sid}")).json()
    assert (got["offset"], got["chunk_count"]) == (100, 1)  # acknowledged: kept; failed: not
    resp = await mongo_client.post(f"{API}/sessions/{sid}/commit",
                                   json={"expected_offset": 100, "chunks": records[1:]})
    assert resp.json() == {"offset": 200, "chunk_count": 2}, resp.text
    chunk = await mongo_client.get(f"{API}/sessions/{sid}/chunks/1")
    assert chunk.content == blobs[1]


def test_a_url_the_driver_refuses_is_a_config_error_without_the_password() -> None:
    from sessions.storage.mongo_backend import MongoBackend

    with pytest.raises(ConfigError) as info:
        MongoBackend(parse(f"mongodb://lucid:{PASSWORD}@db:99999/lucid"))
    assert PASSWORD not in str(info.value) and "mongodb://***@db:99999" in str(info.value)
