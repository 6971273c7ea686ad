"""The processor's chunk read resumes an answer that broke off, with a Range, a bounded number
of times, and never splices bytes from anywhere but the byte it reached.

The real storage app answers (httpx's ASGI transport, a real chunk file); a transport
around it cuts chosen answers after some bytes with the `httpx.ReadError` a reset
connection raises (STYLE trait 9: clients take a transport so failures can be injected).
A storage that does not answer at all is a real loopback port that refuses the connection.
tests/e2e/test_chunk_resume.py does the same with real processes and a real TCP cut.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sessions.common.errors import UpstreamUnavailable
from sessions.common.httpclient import service_transport
from sessions.common.settings import Transport
from sessions.contract.storage import CreateSessionIn, WrappedKeyModel
from sessions.core import ChunkEntry, MasterKey, new_data_key
from sessions.processor import storage_client
from sessions.processor.storage_client import StorageClient
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

pytestmark = pytest.mark.anyio
SID = "01J0000000000000000000RSME"
SEALED = os.urandom(700_000)
CUT_AT = 250_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Cut(httpx.AsyncByteStream):
    """A body that sends `keep` bytes of `body`, then fails as a reset connection does."""

    def __init__(self, body: bytes, keep: int) -> None:
        self.body, self.keep = body, keep

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body[:self.keep]
        raise httpx.ReadError("connection reset by peer")


class Cutting(httpx.AsyncBaseTransport):
    """Storage behind a transport that cuts the next `cuts` chunk answers after `keep` bytes
    and records each chunk request's Range and answer status."""

    def __init__(self, app: FastAPI, *, cuts: int, keep: int = CUT_AT,
                 drop_range: bool = False) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.cuts, self.keep, self.drop_range = cuts, keep, drop_range
        self.seen: list[tuple[str | None, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/chunks/" not in request.url.path:
            return await self.inner.handle_async_request(request)
        asked = request.headers.get("range")
        if self.drop_range and "range" in request.headers:
            del request.headers["range"]  # a server that ignores Range: 200, the whole chunk
        resp = await self.inner.handle_async_request(request)
        self.seen.append((asked, resp.status_code))
        if self.cuts == 0 or resp.status_code >= 300:
            return resp
        self.cuts -= 1
        body = await resp.aread()
        return httpx.Response(resp.status_code, headers=resp.headers,
                              stream=_Cut(body, self.keep))


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[FastAPI]:
    """Storage with one committed chunk (index 0, SEALED) of session SID."""
    app = storage_app(StorageSettings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        client = StorageClient("http://storage", _token(tmp_path),
                               transport=httpx.ASGITransport(app=app))
        wrapped = MasterKey(bytes(range(32))).wrap(new_data_key(), session_id=SID)
        await client.create_session(CreateSessionIn(
            id=SID, labels={}, retention_days=1, wrapped_key=WrappedKeyModel.of(wrapped),
            chunk_size=1 << 20, zstd_level=3, format_version=1, upload_length=None))
        leaf = hashlib.sha256(b"\x00" + SEALED).digest()
        await client.put_chunk(SID, 0, SEALED, leaf)
        await client.commit(SID, expected_offset=0, chunks=[ChunkEntry(
            index=0, offset=0, length=1 << 20, sealed_length=len(SEALED), leaf_hash=leaf,
            compressed=False)])
        await client.aclose()
        yield app


def _token(tmp_path: Path) -> str:
    return StorageSettings(data_dir=tmp_path).service_token()


async def read(tmp_path: Path, transport: httpx.AsyncBaseTransport,
               base_url: str = "http://storage") -> bytes:
    client = StorageClient(base_url, _token(tmp_path), transport=transport)
    try:
        return bytes(await client.read_chunk_into(SID, 0, memoryview(bytearray(1 << 20))))
    finally:
        await client.aclose()


async def test_a_read_cut_mid_chunk_resumes_from_the_byte_it_reached(
        storage: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_client, "RESUME_DELAYS", (0.0, 0.0))
    cutting = Cutting(storage, cuts=2)  # the first answer and the first resume both break
    assert await read(tmp_path, cutting) == SEALED
    assert cutting.seen == [(None, 200), (f"bytes={CUT_AT}-", 206),
                            (f"bytes={2 * CUT_AT}-", 206)]


async def test_resumes_are_bounded(storage: FastAPI, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_client, "RESUME_DELAYS", (0.0, 0.0, 0.0))
    cutting = Cutting(storage, cuts=100, keep=1000)
    with pytest.raises(UpstreamUnavailable, match="broke off"):
        await read(tmp_path, cutting)
    assert len(cutting.seen) == 4  # the read and three resumes, then a 503


async def test_a_resume_answered_with_other_bytes_is_refused_not_spliced(
        storage: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed read answered 200 (the whole chunk from byte 0) is a 503, not bytes
    appended at the byte reached."""
    monkeypatch.setattr(storage_client, "RESUME_DELAYS", (0.0,))
    cutting = Cutting(storage, cuts=1, drop_range=True)
    with pytest.raises(UpstreamUnavailable, match="malformed"):
        await read(tmp_path, cutting)
    assert cutting.seen == [(None, 200), (f"bytes={CUT_AT}-", 200)]


class Counting(httpx.AsyncBaseTransport):
    """Passes every request to `inner` and counts them."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.calls = inner, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("kind", list(Transport))
async def test_storage_not_answering_at_all_is_not_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: Transport) -> None:
    """A loopback port bound but never listened on: the kernel refuses the connection (a
    reset to the SYN), as a stopped storage's port does, without another process able to
    take the port meanwhile.  Each kind of transport the processor runs reaches it."""
    monkeypatch.setattr(storage_client, "RESUME_DELAYS", (0.0, 0.0, 0.0))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        counting = Counting(service_transport(kind, max_connections=4))
        with pytest.raises(UpstreamUnavailable, match="not answering"):
            await read(tmp_path, counting, f"http://127.0.0.1:{port}")
    assert counting.calls == 1
