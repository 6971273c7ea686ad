"""Fixtures of the storage tests: stores on tmp_path, and the app behind an in-process client.

`meta` is parametrised over both metadata backends (SQLite, MongoDB on the test
server of `tests.mongo_server`), so every metadata test is a contract test.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessions.common.ids import new_session_id
from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.config import Settings
from sessions.storage.dburl import MetadataUrl, parse
from sessions.storage.main import create_app
from sessions.storage.metastore import MetadataStore, open_metastore
from sessions.storage.records import NewSession, WrappedKey
from tests.mongo_server import MongoServer, mongo_server  # noqa: F401 - a fixture

SERVICE_TOKEN = "storage-test-token-" + "k" * 32
MAX_CHUNK_BYTES = 4 * 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def service_token() -> str:
    return SERVICE_TOKEN


@pytest.fixture
def ids() -> Callable[[], str]:
    """Return a factory of session ids that sort in the order they are made."""
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 1000))
    return lambda: new_session_id(now_ms=next(clock))


@pytest.fixture
def new_session(ids: Callable[[], str]) -> Callable[..., NewSession]:
    def make(**overrides: Any) -> NewSession:
        fields: dict[str, Any] = {
            "id": ids(), "wrapped_key": WrappedKey(key_id="master-1", blob=b"\x01" * 60),
            "chunk_size": 1024, "zstd_level": 3, "format_version": 1,
            "labels": {"host": "web-1"}, "retention_days": 30}
        fields.update(overrides)
        return NewSession(**fields)
    return make


BACKENDS = ("sqlite", "mongodb")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def meta_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> MetadataUrl:
    """Return the URL of an empty metadata database of the backend under test."""
    if backend == "sqlite":
        return parse(f"sqlite:///{tmp_path}/meta/metadata.sqlite3")
    server: MongoServer = request.getfixturevalue("mongo_server")
    return parse(server.url())


@pytest.fixture
async def open_store(meta_url: MetadataUrl) -> AsyncIterator[Callable[[], Any]]:
    """Return a factory of store instances on one database, all closed afterwards."""
    opened: list[MetadataStore] = []

    async def make() -> MetadataStore:
        store = await open_metastore(meta_url)
        opened.append(store)
        return store
    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def meta(open_store: Callable[[], Any]) -> MetadataStore:
    store: MetadataStore = await open_store()
    return store


@pytest.fixture
def chunkstore(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "chunkroot")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    token_file = tmp_path / "service.token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    return Settings(mode="local", data_dir=tmp_path / "data", service_token_file=token_file,
                    max_chunk_bytes=MAX_CHUNK_BYTES)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://storage",
                                 headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as c:
        yield c


@pytest.fixture
def session_body(ids: Callable[[], str]) -> Callable[..., dict[str, Any]]:
    """Return a factory of POST /internal/v1/sessions bodies."""
    def make(**overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": ids(), "labels": {"host": "web-1"}, "retention_days": 30,
            "wrapped_key": {"key_id": "master-1",
                            "blob": base64.b64encode(b"\x02" * 60).decode()},
            "chunk_size": 1024, "zstd_level": 3, "format_version": 1}
        body.update(overrides)
        return body
    return make


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


@pytest.fixture
def leaf_of() -> Callable[[bytes], bytes]:
    return leaf


def assert_error_body(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check an error response: status, {"error", "detail", ...}, no traceback; return body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body, dict)
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return body


@pytest.fixture
def error_body() -> Callable[[httpx.Response, int, str], dict[str, Any]]:
    return assert_error_body
