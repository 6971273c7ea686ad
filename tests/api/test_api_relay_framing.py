"""The gateway never forwards a Content-Length that does not frame the body it relays.

An upstream answer framed twice (Content-Length and Transfer-Encoding) is
refused by the wire transport, but httpx's own transport (the fallback, h11)
hands it up with both headers.  RFC 9112 section 6.3: an intermediary must not
forward such a Content-Length; the relay re-frames the dechunked body itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.fakes import SESSION_ID, FakeProcessor, auth

pytestmark = pytest.mark.anyio

INTERNAL = f"/internal/v1/sessions/{SESSION_ID}"


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"


@pytest.mark.parametrize("path", ["replay", "chunks/3"])
async def test_a_chunked_upstream_answer_loses_its_content_length(
        gateway: httpx.AsyncClient, fake: FakeProcessor, path: str) -> None:
    async def framed_twice(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Body(), headers={
            "Content-Length": "3", "Transfer-Encoding": "chunked",
            "Content-Type": "application/octet-stream"})

    fake.on("GET", f"{INTERNAL}/{path}", framed_twice)
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/{path}", headers=auth())
    assert resp.status_code == 200
    assert "content-length" not in resp.headers
    assert resp.content == b"hello world"
    assert resp.headers["content-type"] == "application/octet-stream"


async def test_a_length_framed_upstream_answer_keeps_it(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    async def framed_once(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Body(), headers={"Content-Length": "11"})

    fake.on("GET", f"{INTERNAL}/replay", framed_once)
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/replay", headers=auth())
    assert (resp.status_code, resp.content) == (200, b"hello world")
    assert resp.headers["content-length"] == "11"
