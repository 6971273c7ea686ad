"""The storage app over HTTP: staging, committing, listing and reading chunks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessions.common.checksums import Checksum
from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.errors import ChunkCommitted

pytestmark = pytest.mark.anyio
API = "/internal/v1"
OCTET = {"Content-Type": "application/octet-stream"}
ErrorBody = Callable[[httpx.Response, int, str], dict[str, Any]]
Body = Callable[..., dict[str, Any]]
Leaf = Callable[[bytes], bytes]


@pytest.fixture
async def sid(client: httpx.AsyncClient, session_body: Body) -> str:
    resp = await client.post(f"{API}/sessions", json=session_body())
    assert resp.status_code == 201
    return str(resp.json()["id"])


async def put(client: httpx.AsyncClient, sid: str, index: int, data: bytes, leaf: bytes,
              **headers: str) -> httpx.Response:
    sent = {**OCTET, "X-Lucid-Leaf-Hash": leaf.hex(), **headers}
    return await client.put(f"{API}/sessions/{sid}/chunks/{index}", content=data, headers=sent)


def record(index: int, offset: int, data: bytes, leaf: bytes, length: int) -> dict[str, Any]:
    return {"index": index, "offset": offset, "length": length, "sealed_length": len(data),
            "leaf_hash": leaf.hex(), "compressed": True}


async def stage_and_commit(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                           blobs: list[bytes]) -> list[dict[str, Any]]:
    records, offset = [], 0
    for i, data in enumerate(blobs):
        resp = await put(client, sid, i, data, leaf_of(data))
        assert resp.status_code == 201, resp.text
        assert resp.json() == {"index": i, "sealed_length": len(data)}
        records.append(record(i, offset, data, leaf_of(data), length=100))
        offset += 100
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": records})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"offset": offset, "chunk_count": len(blobs)}
    return records


async def test_stage_commit_read(client: httpx.AsyncClient, sid: str, leaf_of: Leaf) -> None:
    blobs = [os.urandom(3 * 1024 * 1024), b"second", b"third"]
    records = await stage_and_commit(client, sid, leaf_of, blobs)
    for i, data in enumerate(blobs):
        got = await client.get(f"{API}/sessions/{sid}/chunks/{i}")
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"] == "application/octet-stream"
    listed = (await client.get(f"{API}/sessions/{sid}/chunks")).json()
    assert listed == {"items": records}
    page = (await client.get(f"{API}/sessions/{sid}/chunks", params={"start": 1, "limit": 1}))
    assert page.json() == {"items": records[1:2]}
    leaves = await client.get(f"{API}/sessions/{sid}/leaves")
    assert leaves.content == b"".join(leaf_of(b) for b in blobs)
    assert leaves.headers["content-type"] == "application/octet-stream"
    two = await client.get(f"{API}/sessions/{sid}/leaves", params={"size": 2})
    assert two.content == leaves.content[:64]
    session = (await client.get(f"{API}/sessions/{sid}")).json()
    assert session["sealed_bytes"] == sum(map(len, blobs)) and session["chunk_count"] == 3
    metrics = (await client.get("/metrics")).text
    assert 'lucid_chunks_in_total{service="storage"} 3.0' in metrics
    assert 'lucid_chunks_out_total{service="storage"} 3.0' in metrics


async def test_a_range_of_a_chunk_is_a_206(client: httpx.AsyncClient, sid: str,
                                           leaf_of: Leaf, error_body: ErrorBody) -> None:
    """One `bytes` range-spec of the sealed object (RFC 9110 §14.1.2): 206 with Content-Range;
    none of its bytes: 416 with `bytes */size`; anything else: 400 `invalid_range`."""
    data = os.urandom(1_500_000)
    await stage_and_commit(client, sid, leaf_of, [data])
    url, size = f"{API}/sessions/{sid}/chunks/0", len(data)
    whole = await client.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    for spec, first, last in [("bytes=0-0", 0, 0), ("bytes=1000-", 1000, size - 1),
                              ("bytes=-10", size - 10, size - 1),
                              ("bytes=5-2000000", 5, size - 1), ("bytes=-9999999", 0, size - 1),
                              ("BYTES=7-8", 7, 8)]:
        got = await client.get(url, headers={"Range": spec})
        assert got.status_code == 206, (spec, got.text)
        assert got.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert got.headers["content-length"] == str(last + 1 - first)
        assert got.content == data[first:last + 1]
    for spec in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        got = await client.get(url, headers={"Range": spec})
        assert error_body(got, 416, "range_not_satisfiable")["size"] == size
        assert got.headers["content-range"] == f"bytes */{size}"
    for spec in ("bytes=5-2", "bytes=0-1,4-5", "items=0-1", "bytes=a-b", "bytes=-", "", "0-1"):
        got = await client.get(url, headers={"Range": spec})
        error_body(got, 400, "invalid_range")
    error_body(await client.get(f"{API}/sessions/{sid}/chunks/1", headers={"Range": "bytes=0-"}),
               404, "chunk_not_found")


async def test_put_checks_headers(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                  error_body: ErrorBody) -> None:
    data = b"sealed"
    url = f"{API}/sessions/{sid}/chunks/0"
    hdr = {"X-Lucid-Leaf-Hash": leaf_of(data).hex()}
    for ctype in ("application/json", "text/plain", ""):
        resp = await client.put(url, content=data, headers={**hdr, "Content-Type": ctype})
        error_body(resp, 415, "unsupported_media_type")
    for bad in ("", "ab", "zz" * 32, leaf_of(data).hex() + "00"):
        resp = await client.put(url, content=data, headers={**OCTET, "X-Lucid-Leaf-Hash": bad})
        error_body(resp, 400, "bad_request")
    with_params = {"Content-Type": "Application/Octet-Stream; charset=binary", **hdr}
    assert (await client.put(url, content=data, headers=with_params)).status_code == 201


async def test_leaf_hash_mismatch(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                  app: FastAPI, error_body: ErrorBody) -> None:
    resp = await put(client, sid, 0, b"sealed", leaf_of(b"other"))
    error_body(resp, 400, "leaf_hash_mismatch")
    store: LocalChunkStore = app.state.resources.chunkstore
    assert not store.session_dir(sid).exists() or list(store.session_dir(sid).iterdir()) == []


async def test_upload_checksum_is_checked_instead_of_the_leaf_hash(
        client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI,
        error_body: ErrorBody) -> None:
    data = os.urandom(100_000)
    crc = Checksum.of("crc32c", data)
    good = crc.header
    wrong = Checksum("crc32c", bytes(4) if crc.digest != bytes(4) else b"\1" * 4).header
    store: LocalChunkStore = app.state.resources.chunkstore
    resp = await put(client, sid, 0, data, leaf_of(data), **{"Upload-Checksum": wrong})
    error_body(resp, 400, "chunk_checksum_mismatch")
    assert not store.session_dir(sid).exists() or list(store.session_dir(sid).iterdir()) == []
    for bad in ("crc32c", "crc32c AAAA", "adler32 AAAAAA==", "crc32c " + "A" * 8):
        error_body(await put(client, sid, 0, data, leaf_of(data), **{"Upload-Checksum": bad}),
                   400, "bad_request")
    # The leaf hash is the processor's statement, recorded as given when a checksum is sent.
    resp = await put(client, sid, 0, data, leaf_of(b"named"), **{"Upload-Checksum": good})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"index": 0, "sealed_length": len(data)}


async def test_too_large(client: httpx.AsyncClient, sid: str, app: FastAPI,
                         error_body: ErrorBody) -> None:
    limit = app.state.settings.max_chunk_bytes
    data = b"x" * (limit + 1)
    error_body(await put(client, sid, 0, data, b"\0" * 32), 413, "payload_too_large")

    async def unsized() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    resp = await client.put(f"{API}/sessions/{sid}/chunks/0", content=unsized(),
                            headers={**OCTET, "X-Lucid-Leaf-Hash": "00" * 32})
    assert "content-length" not in resp.request.headers
    error_body(resp, 413, "payload_too_large")


async def test_committed_chunks_are_immutable(client: httpx.AsyncClient, sid: str,
                                              leaf_of: Leaf, error_body: ErrorBody) -> None:
    await stage_and_commit(client, sid, leaf_of, [b"zero", b"one"])
    body = error_body(await put(client, sid, 1, b"evil", leaf_of(b"evil")), 409,
                      "chunk_committed")
    assert body["chunk_count"] == 2
    assert (await client.get(f"{API}/sessions/{sid}/chunks/1")).content == b"one"
    assert (await put(client, sid, 2, b"two", leaf_of(b"two"))).status_code == 201


async def test_put_needs_recording(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                   error_body: ErrorBody) -> None:
    await client.post(f"{API}/sessions/{sid}/state", json={"to": "finalizing"})
    error_body(await put(client, sid, 0, b"x", leaf_of(b"x")), 409, "invalid_state")


async def test_put_ids_and_indexes(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                   error_body: ErrorBody, session_body: Body) -> None:
    error_body(await put(client, "../../x", 0, b"x", leaf_of(b"x")), 404, "not_found")
    error_body(await put(client, "bad-id", 0, b"x", leaf_of(b"x")), 400, "invalid_id")
    error_body(await put(client, session_body()["id"], 0, b"x", leaf_of(b"x")), 404,
               "session_not_found")
    for index in ("-1", "x", "10000000000"):
        error_body(await client.put(f"{API}/sessions/{sid}/chunks/{index}", content=b"x",
                                    headers={**OCTET, "X-Lucid-Leaf-Hash": "00" * 32}),
                   422, "invalid_parameter")


async def test_commit_offset_mismatch(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                      error_body: ErrorBody) -> None:
    records = await stage_and_commit(client, sid, leaf_of, [b"zero"])
    late = [record(1, 0, b"one", leaf_of(b"one"), 10)]
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": late})
    body = error_body(resp, 409, "offset_mismatch")
    assert body["offset"] == 100
    # A repeat of the commit that went through (its answer lost) succeeds, changing nothing;
    # the same index with other content is refused.
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": records})
    assert resp.status_code == 200 and resp.json() == {"offset": 100, "chunk_count": 1}
    other = [dict(records[0], leaf_hash=leaf_of(b"other").hex())]
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": other})
    error_body(resp, 409, "chunk_committed")


async def test_commit_needs_staged_files(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                         error_body: ErrorBody) -> None:
    assert (await put(client, sid, 0, b"zero", leaf_of(b"zero"))).status_code == 201
    wrong_size = dict(record(0, 0, b"zero", leaf_of(b"zero"), 10), sealed_length=5)
    missing = record(1, 10, b"one", leaf_of(b"one"), 10)
    for chunks in ([wrong_size], [record(0, 0, b"zero", leaf_of(b"zero"), 10), missing]):
        resp = await client.post(f"{API}/sessions/{sid}/commit",
                                 json={"expected_offset": 0, "chunks": chunks})
        error_body(resp, 409, "chunk_not_staged")
    session = (await client.get(f"{API}/sessions/{sid}")).json()
    assert (session["offset"], session["chunk_count"]) == (0, 0)


async def test_commit_rejects_gaps(client: httpx.AsyncClient, sid: str, leaf_of: Leaf,
                                   error_body: ErrorBody) -> None:
    assert (await put(client, sid, 1, b"one", leaf_of(b"one"))).status_code == 201
    resp = await client.post(f"{API}/sessions/{sid}/commit", json={
        "expected_offset": 0, "chunks": [record(1, 0, b"one", leaf_of(b"one"), 10)]})
    error_body(resp, 409, "conflict")
    bad = await client.post(f"{API}/sessions/{sid}/commit",
                            json={"expected_offset": 0, "chunks": [{"index": 0}]})
    error_body(bad, 422, "invalid_parameter")


async def test_reading_chunks(client: httpx.AsyncClient, sid: str, leaf_of: Leaf, app: FastAPI,
                              error_body: ErrorBody) -> None:
    await stage_and_commit(client, sid, leaf_of, [b"zero"])
    assert (await put(client, sid, 1, b"staged", leaf_of(b"staged"))).status_code == 201
    body = error_body(await client.get(f"{API}/sessions/{sid}/chunks/1"), 404,
                      "chunk_not_found")
    assert "missing" not in body
    store: LocalChunkStore = app.state.resources.chunkstore
    store.chunk_path(sid, 0).unlink()
    body = error_body(await client.get(f"{API}/sessions/{sid}/chunks/0"), 404,
                      "chunk_not_found")
    assert body["missing"] is True
    error_body(await client.get(f"{API}/sessions/{sid}/leaves", params={"size": 5}), 422,
               "invalid_parameter")


async def test_delete_erases_then_removes_files(client: httpx.AsyncClient, sid: str,
                                                leaf_of: Leaf, app: FastAPI,
                                                error_body: ErrorBody) -> None:
    await stage_and_commit(client, sid, leaf_of, [b"zero", b"one"])
    store: LocalChunkStore = app.state.resources.chunkstore
    assert store.session_dir(sid).is_dir()
    assert (await client.delete(f"{API}/sessions/{sid}")).status_code == 204
    assert not store.session_dir(sid).exists()
    error_body(await client.get(f"{API}/sessions/{sid}/chunks/0"), 409, "invalid_state")
    error_body(await put(client, sid, 2, b"two", leaf_of(b"two")), 409, "invalid_state")
    assert (await client.delete(f"{API}/sessions/{sid}")).status_code == 204


async def test_a_put_racing_a_commit_cannot_replace_the_chunk(client: httpx.AsyncClient,
                                                              sid: str, leaf_of: Leaf,
                                                              app: FastAPI) -> None:
    assert (await put(client, sid, 0, b"zero", leaf_of(b"zero"))).status_code == 201
    streaming, release = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        streaming.set()  # the PUT has passed its first check and is reading the body
        yield b"evil"
        await release.wait()

    racer = asyncio.create_task(app.state.resources.service.put_chunk(
        sid, 0, slow_body(), leaf_hash=leaf_of(b"evil"), content_length=None))
    await streaming.wait()
    await stage_commit_only(client, sid, [record(0, 0, b"zero", leaf_of(b"zero"), 4)])
    release.set()
    with pytest.raises(ChunkCommitted):
        await racer
    assert (await client.get(f"{API}/sessions/{sid}/chunks/0")).content == b"zero"
    store: LocalChunkStore = app.state.resources.chunkstore
    assert [p.name for p in store.session_dir(sid).iterdir()] == ["0000000000.lcs"]


async def stage_commit_only(client: httpx.AsyncClient, sid: str,
                            records: list[dict[str, Any]]) -> None:
    resp = await client.post(f"{API}/sessions/{sid}/commit",
                             json={"expected_offset": 0, "chunks": records})
    assert resp.status_code == 200, resp.text
