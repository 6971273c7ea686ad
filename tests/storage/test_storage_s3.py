"""Storage on S3: settings pick the store, the app stores chunks as objects, and an object
store that goes away answers 503 and acknowledges nothing, then recovers by itself."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from fastapi import FastAPI

from sessions.common.secrets import ConfigError
from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.config import Settings, parse_s3_url
from sessions.storage.main import create_app
from sessions.storage.s3store import S3ChunkStore
from tests.storage.conftest import MAX_CHUNK_BYTES, SERVICE_TOKEN, assert_error_body
from tests.storage.s3_server import S3Server, s3_server, weed_binary  # noqa: F401 - a fixture
from tests.storage.test_storage_http_chunks import put, record

pytestmark = pytest.mark.anyio
API = "/internal/v1"


def s3_settings(tmp_path: Path, server: S3Server, url: str) -> Settings:
    token_file = tmp_path / "service.token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    key, secret = server.write_credentials(tmp_path / "secrets")
    return Settings(mode="local", data_dir=tmp_path / "data", service_token_file=token_file,
                    max_chunk_bytes=MAX_CHUNK_BYTES, chunk_store_url=url,
                    s3_endpoint=server.endpoint, s3_access_key_file=key,
                    s3_secret_key_file=secret)


@pytest.mark.parametrize("url", ["s3://", "s3://Bucket/x", "http://bucket/x", "s3://b/x",
                                 "s3://key:secret@bucket/x", "s3://bucket/x?secret=1",
                                 "s3://bucket/../x", "s3://bucket/a b"])
def test_bad_chunk_store_urls_are_refused_redacted(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_s3_url(url)
    assert "secret" not in str(info.value) and "LUCID_CHUNK_STORE_URL" in str(info.value)


def test_chunk_store_urls() -> None:
    assert parse_s3_url("s3://lucid-chunks") == ("lucid-chunks", "")
    assert parse_s3_url("s3://lucid.chunks/site-1/rec/") == ("lucid.chunks", "site-1/rec")


def test_settings_pick_the_store_and_need_both_key_files(tmp_path: Path) -> None:
    key, secret = tmp_path / "key", tmp_path / "secret"
    key.write_text("AKIDEXAMPLE\n")
    secret_text = secrets.token_urlsafe(30)
    secret.write_text(secret_text + "\n")
    local = Settings(mode="local", data_dir=tmp_path)
    assert local.chunk_store_location() is None
    with pytest.raises(ConfigError, match="LUCID_S3_SECRET_KEY_FILE"):
        Settings(mode="local", data_dir=tmp_path, chunk_store_url="s3://lucid/x",
                 s3_access_key_file=key).chunk_store_location()
    location = Settings(mode="local", data_dir=tmp_path, chunk_store_url="s3://lucid/x",
                        s3_endpoint="https://s3.example.org", s3_access_key_file=key,
                        s3_secret_key_file=secret).chunk_store_location()
    assert location is not None
    assert (location.bucket, location.prefix, location.access_key_id) == ("lucid", "x",
                                                                          "AKIDEXAMPLE")
    assert location.secret_access_key == secret_text
    assert secret_text not in repr(location) and "AKID" not in repr(location)
    assert location.redacted == "s3://lucid/x at https://s3.example.org"


@pytest.fixture
async def s3_client(tmp_path: Path, s3_server: S3Server,  # noqa: F811
                    ) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(s3_settings(tmp_path, s3_server, s3_server.url()))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://storage",
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as client:
        yield client, app


async def test_the_app_keeps_chunks_as_objects(
        s3_client: tuple[httpx.AsyncClient, FastAPI], session_body: Callable[..., Any],
        leaf_of: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture) -> None:
    client, app = s3_client
    store = app.state.resources.chunkstore
    assert isinstance(store, S3ChunkStore)
    sid = (await client.post(f"{API}/sessions", json=session_body())).json()["id"]
    blobs = [os.urandom(300_000), b"second"]
    for i, data in enumerate(blobs):
        assert (await put(client, sid, i, data, leaf_of(data))).status_code == 201
    assert (await put(client, sid, 1, b"resealed", leaf_of(b"resealed"))).status_code == 201
    blobs[1] = b"resealed"
    records = [record(0, 0, blobs[0], leaf_of(blobs[0]), 100),
               record(1, 100, blobs[1], leaf_of(blobs[1]), 100)]
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": records})
    assert resp.status_code == 200, resp.text
    for i, data in enumerate(blobs):
        got = await client.get(f"{API}/sessions/{sid}/chunks/{i}")
        assert got.status_code == 200 and got.content == data
    assert_error_body(await put(client, sid, 1, b"x", leaf_of(b"x")), 409, "chunk_committed")
    assert await store.session_ids() == [sid]
    assert (await client.get("/ready")).status_code == 200
    assert (await client.delete(f"{API}/sessions/{sid}")).status_code in (200, 204)
    assert await store.session_ids() == [] and not await store.exists(sid, 0)


@pytest.fixture
def own_s3_server(tmp_path_factory: pytest.TempPathFactory,
                  s3_server: S3Server) -> Iterator[S3Server]:  # noqa: F811 - skips with it
    """A server of this test alone, which it stops and restarts."""
    binary = weed_binary()
    assert binary is not None
    server = S3Server(tmp_path_factory.mktemp("s3own"), binary)
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def test_object_store_down_answers_503_and_acknowledges_nothing(
        tmp_path: Path, own_s3_server: S3Server, session_body: Callable[..., Any],
        leaf_of: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture) -> None:
    server = own_s3_server
    app = create_app(s3_settings(tmp_path, server, server.url()))
    caplog.set_level(logging.DEBUG)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://storage",
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as client:
        sid = (await client.post(f"{API}/sessions", json=session_body())).json()["id"]
        first = b"committed before the outage"
        assert (await put(client, sid, 0, first, leaf_of(first))).status_code == 201
        ok = await client.post(f"{API}/sessions/{sid}/commit", json={
            "expected_offset": 0, "chunks": [record(0, 0, first, leaf_of(first), 10)]})
        assert ok.status_code == 200
        server.stop()
        lost = b"sent while the store is down"
        assert_error_body(await put(client, sid, 1, lost, leaf_of(lost)), 503,
                          "storage_unavailable")
        commit = await client.post(f"{API}/sessions/{sid}/commit", json={
            "expected_offset": 10, "chunks": [record(1, 10, lost, leaf_of(lost), 10)]})
        assert_error_body(commit, 503, "storage_unavailable")
        assert_error_body(await client.get(f"{API}/sessions/{sid}/chunks/0"), 503,
                          "storage_unavailable")
        assert (await client.get("/ready")).status_code == 503
        server.start()
        session = (await client.get(f"{API}/sessions/{sid}")).json()
        assert session["chunk_count"] == 1  # nothing unwritten was acknowledged
        assert not await app.state.resources.chunkstore.exists(sid, 1)
        # SeaweedFS's volumes may take a moment after the restart to serve every object.
        # Storage must recover by itself within that time: 503 until then, never wrong bytes.
        deadline = asyncio.get_running_loop().time() + 30
        while (got := await client.get(f"{API}/sessions/{sid}/chunks/0")).status_code == 503:
            assert asyncio.get_running_loop().time() < deadline, "no read recovery in 30 s"
            await asyncio.sleep(0.2)
        assert got.status_code == 200 and got.content == first
        while (status := (await put(client, sid, 1, lost, leaf_of(lost))).status_code) == 503:
            assert asyncio.get_running_loop().time() < deadline, "no write recovery in 30 s"
            await asyncio.sleep(0.2)
        assert status == 201
        assert (await client.get("/ready")).status_code == 200
    logged = caplog.text
    assert server.secret_key not in logged and server.access_key not in logged
    assert obstore.__name__ + ".exceptions" not in logged  # only the type name is logged


async def test_the_local_directory_stays_the_default(app: FastAPI) -> None:
    assert isinstance(app.state.resources.chunkstore, LocalChunkStore)


def test_the_local_store_does_not_load_the_s3_client() -> None:
    """obstore costs every process that imports it about 5 MiB of RSS: load it only on S3."""
    code = ("import sys; import sessions.storage.main, sessions.storage.__main__; "
            "print('obstore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code],  # noqa: S603 - this interpreter
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
