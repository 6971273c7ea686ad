"""The upload protocol at the gateway: header checks, streaming, limits, pass-through errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from sessions.api.config import Settings
from sessions.api.main import create_app
from tests.api.fakes import SESSION_ID, FakeProcessor, auth, error_of

pytestmark = pytest.mark.anyio

UPLOAD = f"/v1/sessions/{SESSION_ID}/upload"
INTERNAL = f"/internal/v1/sessions/{SESSION_ID}/upload"
OCTETS = "application/offset+octet-stream"
PLAIN_OCTETS = "application/octet-stream"


def checksum(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def patch_headers(offset: str = "0", **extra: str) -> dict[str, str]:
    return auth(**{"Upload-Offset": offset, "Content-Type": OCTETS, **extra})


def accept_upload(fake: FakeProcessor) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        end = int(request.headers["upload-offset"]) + len(fake.last_body())
        return httpx.Response(200, json={"offset": end, "chunk_count": 1},
                              headers={"Upload-Offset": str(end)})
    fake.on("PATCH", INTERNAL, handler)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_patch_streams_the_body_and_forwards_the_headers(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    accept_upload(fake)
    parts = [bytes([i]) * 4096 for i in range(5)]
    data = b"".join(parts)
    resp = await gateway.patch(UPLOAD, content=pieces(*parts), headers=patch_headers(
        "8192", **{"Upload-Checksum": checksum(data), "Content-Length": str(len(data))}))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"offset": 8192 + len(data), "chunk_count": 1}
    assert resp.headers["upload-offset"] == str(8192 + len(data))
    sent = fake.last
    assert fake.last_body() == data
    forwarded = [len(piece) for piece in fake.bodies[-1]]
    assert len(forwarded) > 1, "the body was buffered, not streamed piece by piece"
    assert max(forwarded) <= 4096, f"pieces were joined before forwarding: {forwarded}"
    assert sent.headers["upload-offset"] == "8192"
    assert sent.headers["content-type"] == OCTETS
    assert sent.headers["content-length"] == str(len(data))
    assert sent.headers["upload-checksum"] == checksum(data)


async def test_patch_without_content_length_is_streamed_chunked(gateway: httpx.AsyncClient,
                                                               fake: FakeProcessor) -> None:
    accept_upload(fake)
    resp = await gateway.patch(UPLOAD, content=pieces(b"a" * 100, b"b" * 100),
                               headers=patch_headers(**{"Content-Type": PLAIN_OCTETS}))
    assert resp.status_code == 200
    assert fake.last_body() == b"a" * 100 + b"b" * 100
    assert "content-length" not in fake.last.headers


async def test_upload_bytes_are_counted(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    accept_upload(fake)
    await gateway.patch(UPLOAD, content=b"x" * 1000, headers=patch_headers())
    metrics = (await gateway.get("/metrics", headers=auth())).text
    assert 'lucid_bytes_in_total{kind="upload",service="api"} 1000.0' in metrics


@pytest.mark.parametrize("offset", [None, "", "-1", "abc", "1.5", " 12", "0x10", "1" * 20])
async def test_bad_upload_offset_is_400(gateway: httpx.AsyncClient, fake: FakeProcessor,
                                        offset: str | None) -> None:
    headers = patch_headers()
    if offset is None:
        del headers["Upload-Offset"]
    else:
        headers["Upload-Offset"] = offset
    resp = await gateway.patch(UPLOAD, content=b"x", headers=headers)
    assert resp.status_code == 400
    assert error_of(resp) == "bad_request"
    assert fake.requests == []


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain",
                                          "multipart/form-data; boundary=x"])
async def test_wrong_content_type_is_415(gateway: httpx.AsyncClient, fake: FakeProcessor,
                                         content_type: str | None) -> None:
    headers = patch_headers()
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    resp = await gateway.patch(UPLOAD, content=b"x", headers=headers)
    assert resp.status_code == 415
    assert error_of(resp) == "unsupported_media_type"
    assert fake.requests == []


async def test_oversized_content_length_is_413(gateway: httpx.AsyncClient,
                                               fake: FakeProcessor) -> None:
    data = b"x" * (64 * 1024 + 1)
    resp = await gateway.patch(UPLOAD, content=data, headers=patch_headers())
    assert resp.status_code == 413
    assert error_of(resp) == "payload_too_large"
    assert fake.requests == []


async def test_oversized_streamed_body_is_413(gateway: httpx.AsyncClient,
                                              fake: FakeProcessor) -> None:
    accept_upload(fake)
    resp = await gateway.patch(UPLOAD, content=pieces(*[b"x" * 16384] * 5),
                               headers=patch_headers())
    assert resp.status_code == 413
    assert error_of(resp) == "payload_too_large"


@pytest.mark.parametrize("value", [
    "md5 " + base64.b64encode(b"0" * 20).decode(),
    "crc32c " + base64.b64encode(b"0" * 16).decode(),
    "crc32 " + base64.b64encode(b"0" * 4).decode(),
    "sha256 " + base64.b64encode(b"0" * 16).decode(),
    "sha256 not*base64",
    "sha256",
    "sha256 " + hashlib.sha256(b"").hexdigest(),
])
async def test_malformed_checksum_is_400(gateway: httpx.AsyncClient, fake: FakeProcessor,
                                         value: str) -> None:
    resp = await gateway.patch(UPLOAD, content=b"x",
                               headers=patch_headers(**{"Upload-Checksum": value}))
    assert resp.status_code == 400
    assert error_of(resp) == "bad_request"
    assert fake.requests == []


async def test_invalid_session_id_is_400(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    for bad in ("not-an-id", SESSION_ID.lower(), SESSION_ID + "0", "8" + SESSION_ID[1:]):
        resp = await gateway.patch(f"/v1/sessions/{bad}/upload", content=b"x",
                                   headers=patch_headers())
        assert resp.status_code == 400
        assert error_of(resp) == "invalid_id"
    assert fake.requests == []


async def test_offset_mismatch_passes_through_unchanged(gateway: httpx.AsyncClient,
                                                       fake: FakeProcessor) -> None:
    body = {"error": "offset_mismatch", "detail": "Upload-Offset 0 is not the committed 4096",
            "offset": 4096}
    fake.reply("PATCH", INTERNAL, 409, body, headers={"Upload-Offset": "4096"})
    resp = await gateway.patch(UPLOAD, content=b"x", headers=patch_headers())
    assert resp.status_code == 409
    assert resp.json() == body
    assert resp.headers["upload-offset"] == "4096"


@pytest.mark.parametrize(("status", "body"), [
    (460, {"error": "checksum_mismatch", "detail": "the body does not match"}),
    (409, {"error": "upload_in_progress", "detail": "another writer"}),
    (404, {"error": "session_not_found", "detail": "no such session"}),
    (409, {"error": "invalid_state", "detail": "completed", "state": "completed"}),
])
async def test_upstream_errors_pass_through(gateway: httpx.AsyncClient, fake: FakeProcessor,
                                            status: int, body: dict[str, object]) -> None:
    fake.reply("PATCH", INTERNAL, status, body)
    resp = await gateway.patch(UPLOAD, content=b"x", headers=patch_headers())
    assert (resp.status_code, resp.json()) == (status, body)


async def test_unreachable_processor_is_503(gateway: httpx.AsyncClient,
                                            fake: FakeProcessor) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    fake.on("PATCH", INTERNAL, refuse)
    fake.on("GET", INTERNAL, refuse)
    resp = await gateway.patch(UPLOAD, content=b"x", headers=patch_headers())
    assert resp.status_code == 503
    assert error_of(resp) == "upstream_unavailable"
    assert "refused" not in resp.text
    resp = await gateway.get(UPLOAD, headers=auth())
    assert resp.status_code == 503
    assert error_of(resp) == "upstream_unavailable"


async def test_head_and_get_report_the_offset(gateway: httpx.AsyncClient,
                                              fake: FakeProcessor) -> None:
    status = {"offset": 3 * 1048576, "chunk_count": 3, "chunk_size": 1048576,
              "state": "recording"}
    fake.reply("GET", INTERNAL, body=status)
    resp = await gateway.head(UPLOAD, headers=auth())
    assert resp.status_code == 200
    assert resp.headers["upload-offset"] == str(3 * 1048576)
    assert resp.content == b""
    resp = await gateway.get(UPLOAD, headers=auth())
    assert resp.json() == status


@pytest.fixture
async def small_gateway(settings: Settings, fake: FakeProcessor
                        ) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose sessions hold at most 10000 bytes and whose bodies stall after 0.3 s."""
    small = settings.model_copy(update={"max_session_bytes": 10_000, "body_read_timeout": 0.3})
    app = create_app(small, processor_transport=fake)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as client:
        yield client


async def test_a_patch_past_the_session_size_is_413(small_gateway: httpx.AsyncClient,
                                                    fake: FakeProcessor) -> None:
    accept_upload(fake)
    ok = await small_gateway.patch(UPLOAD, content=b"x" * 4000, headers=patch_headers("6000"))
    assert ok.status_code == 200
    resp = await small_gateway.patch(UPLOAD, content=b"x" * 4001, headers=patch_headers("6000"))
    assert resp.status_code == 413 and resp.json()["max_session_bytes"] == 10_000
    streamed = await small_gateway.patch(UPLOAD, content=pieces(b"x" * 3000, b"x" * 3000),
                                         headers=patch_headers("6000"))
    assert streamed.status_code == 413 and error_of(streamed) == "payload_too_large"


async def test_a_stalled_body_is_408(small_gateway: httpx.AsyncClient,
                                     fake: FakeProcessor) -> None:
    accept_upload(fake)

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 100
        await asyncio.sleep(30)
        yield b"never"

    resp = await small_gateway.patch(UPLOAD, content=stalls(), headers=patch_headers())
    assert resp.status_code == 408 and error_of(resp) == "request_timeout"
    assert resp.headers["connection"] == "close"
