"""Replay and sealed chunks: status, headers and bytes relayed; a broken stream is cut."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.api.fakes import SESSION_ID, FakeProcessor, auth, error_of

pytestmark = pytest.mark.anyio

REPLAY = f"/v1/sessions/{SESSION_ID}/replay"
INTERNAL = f"/internal/v1/sessions/{SESSION_ID}"


class Pieces(httpx.AsyncByteStream):
    """An upstream body that yields pieces, then optionally breaks like a dropped connection."""

    def __init__(self, *parts: bytes, fail: bool = False) -> None:
        self.parts = parts
        self.fail = fail
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.fail:
            raise httpx.ReadError("connection reset by peer")

    async def aclose(self) -> None:
        self.closed = True


async def test_replay_relays_206_and_its_headers(gateway: httpx.AsyncClient,
                                                 fake: FakeProcessor) -> None:
    data = bytes(range(256)) * 8
    stream = Pieces(data[100:1100])

    async def ranged(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, stream=stream, headers={
            "Content-Length": "1000", "Content-Range": f"bytes 100-1099/{len(data)}",
            "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
            "X-Internal": "not for clients"})

    fake.on("GET", f"{INTERNAL}/replay", ranged)
    resp = await gateway.get(REPLAY, headers=auth(Range="bytes=100-1099"))
    assert resp.status_code == 206
    assert resp.content == data[100:1100]
    assert resp.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert resp.headers["content-length"] == "1000"
    assert resp.headers["accept-ranges"] == "bytes"
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["cache-control"] == "no-store"
    assert "x-internal" not in resp.headers
    assert fake.last.headers["range"] == "bytes=100-1099"
    assert stream.closed
    metrics = (await gateway.get("/metrics", headers=auth())).text
    assert 'lucid_bytes_out_total{kind="replay",service="api"} 1000.0' in metrics


async def test_replay_without_range_is_200(gateway: httpx.AsyncClient,
                                           fake: FakeProcessor) -> None:
    fake.on("GET", f"{INTERNAL}/replay", _ok(b"hello world"))
    resp = await gateway.get(REPLAY, headers=auth())
    assert (resp.status_code, resp.content) == (200, b"hello world")
    assert "range" not in fake.last.headers


async def test_replay_errors_pass_through(gateway: httpx.AsyncClient,
                                          fake: FakeProcessor) -> None:
    body = {"error": "range_not_satisfiable", "detail": "outside the session", "size": 10}
    fake.reply("GET", f"{INTERNAL}/replay", 416, body)
    resp = await gateway.get(REPLAY, headers=auth(Range="bytes=50-60"))
    assert (resp.status_code, resp.json()) == (416, body)


async def test_sealed_chunk_is_relayed(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.on("GET", f"{INTERNAL}/chunks/7", _ok(b"LUCS" + b"\x00" * 60))
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/chunks/7", headers=auth())
    assert (resp.status_code, resp.content) == (200, b"LUCS" + b"\x00" * 60)
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/chunks/-1", headers=auth())
    assert resp.status_code == 422
    body = {"error": "chunk_not_found", "detail": "no such chunk", "missing": True}
    fake.reply("GET", f"{INTERNAL}/chunks/8", 404, body)
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/chunks/8", headers=auth())
    assert (resp.status_code, resp.json()) == (404, body)


@pytest.mark.parametrize("short", [True, False], ids=["upstream-ends-short", "upstream-breaks"])
async def test_a_broken_upstream_cuts_the_response(app: FastAPI, fake: FakeProcessor,
                                                   short: bool) -> None:
    stream = Pieces(b"a" * 1000, b"b" * 1000, fail=not short)

    async def broken(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream, headers={"Content-Length": "5000"})

    fake.on("GET", f"{INTERNAL}/replay", broken)
    # raise_app_exceptions=True: the app must fail after the headers, not end the body cleanly.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        with pytest.raises(Exception):  # noqa: B017 - any failure is fine, a clean end is not
            await client.get(REPLAY, headers=auth())
    assert stream.closed


async def test_unreachable_processor_on_replay_is_503(gateway: httpx.AsyncClient,
                                                      fake: FakeProcessor) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)
    fake.on("GET", f"{INTERNAL}/replay", refuse)
    resp = await gateway.get(REPLAY, headers=auth())
    assert resp.status_code == 503
    assert error_of(resp) == "upstream_unavailable"


def _ok(body: bytes):  # type: ignore[no-untyped-def]
    async def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces(body), headers={
            "Content-Length": str(len(body)), "Content-Type": "application/octet-stream"})
    return handler
