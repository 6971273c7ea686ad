"""The service transport against real sockets: a uvicorn app, and scripted raw TCP upstreams.

The uvicorn app stands for our services (what the transport must carry); the
scripted servers send what a broken or hostile upstream could: malformed heads,
short bodies, chunked framing, early answers, silence.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from sessions.common._wire import READ_AHEAD, WireTransport
from tests.uvicorn_server import serving

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a real HTTP server: uvicorn with a small ASGI app ---------------------------------------


async def _echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with the request's facts; /blob/N answers N bytes; /slow/N sends them in pieces."""
    if scope["type"] != "http":
        return
    digest, size, pieces = hashlib.sha256(), 0, 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        pieces += bool(body)
        if not message.get("more_body"):
            break
    path = scope["path"]
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    if path.startswith("/blob/"):
        n = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(n).encode())]})
        for start in range(0, n, MiB):
            await send({"type": "http.response.body", "body": _pattern(start, min(MiB, n - start)),
                        "more_body": start + MiB < n})
        return
    answer = (f'{{"client_port": {scope["client"][1]}, "size": {size}, '
              f'"sha256": "{digest.hexdigest()}", "method": "{scope["method"]}", '
              f'"query": "{scope["query_string"].decode()}", '
              f'"te": "{headers.get("transfer-encoding", "")}", '
              f'"length": "{headers.get("content-length", "")}"}}').encode()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def _pattern(start: int, n: int) -> bytes:
    """Return bytes start..start+n of an endless 251-byte cycle (so pieces line up)."""
    skip = start % 251
    return (bytes(range(251)) * ((skip + n) // 251 + 1))[skip:skip + n]


@asynccontextmanager
async def _uvicorn() -> AsyncIterator[str]:
    config = uvicorn.Config(_echo_app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", http="httptools", loop="asyncio")
    async with serving(config) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with _uvicorn() as url:
        yield url


async def _pieces(*parts: bytes | memoryview) -> AsyncIterator[bytes]:
    for part in parts:
        yield part  # type: ignore[misc]  # memoryviews go through untouched, as put_chunk sends


async def test_bodies_cross_intact_both_ways_on_one_reused_connection(upstream: str) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB
    view = memoryview(bytearray(data))
    async with httpx.AsyncClient(transport=WireTransport(), base_url=upstream) as client:
        first = await client.put("/x?a=1", content=_pieces(view[:3 * MiB], view[3 * MiB:]),
                                 headers={"Content-Length": str(len(data))})
        second = await client.post("/y", content=b"small")
        blob = await client.get(f"/blob/{len(data)}")
    assert first.status_code == 201 and first.reason_phrase == "Created"
    assert first.json()["size"] == len(data)
    assert first.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert first.json()["query"] == "a=1" and first.json()["length"] == str(len(data))
    assert second.json()["size"] == 5 and second.json()["method"] == "POST"
    assert first.json()["client_port"] == second.json()["client_port"], "not reused"
    assert blob.content == _pattern(0, len(data))


async def test_a_body_of_unknown_length_goes_chunked(upstream: str) -> None:
    async with httpx.AsyncClient(transport=WireTransport(), base_url=upstream) as client:
        resp = await client.post("/", content=_pieces(b"a" * 70_000, b"", b"b" * 3))
    assert resp.json()["te"] == "chunked"
    assert resp.json()["sha256"] == hashlib.sha256(b"a" * 70_000 + b"bbb").hexdigest()


async def test_a_streamed_response_arrives_in_pieces_and_a_half_read_one_is_not_reused(
        upstream: str) -> None:
    size = 24 * MiB
    async with httpx.AsyncClient(transport=WireTransport(), base_url=upstream) as client:
        async with client.stream("GET", f"/blob/{size}") as resp:
            got, held = bytearray(), 0
            async for piece in resp.aiter_raw():
                assert len(piece) <= READ_AHEAD
                got += piece
                await asyncio.sleep(0.002)  # a slow reader: the transport must pause, not hoard
                held = max(held, _held_by(resp))
        assert bytes(got) == _pattern(0, size)
        assert 0 < held <= READ_AHEAD + 256 * 1024, f"{held} bytes held for a slow reader"
        async with client.stream("GET", f"/blob/{size}") as resp:
            async for _ in resp.aiter_raw():
                break  # abandon mid-body
        a = (await client.post("/")).json()["client_port"]
        b = (await client.post("/")).json()["client_port"]
    assert a == b, "a fully read exchange leaves its connection reusable"


def _held_by(resp: httpx.Response) -> int:
    """Return the received bytes the response's connection holds (httpx wraps our stream)."""
    return int(resp.stream._stream._wire._buffered)  # type: ignore[union-attr]


async def test_idle_connections_expire_before_the_upstreams_keep_alive(upstream: str) -> None:
    transport = WireTransport(keepalive_expiry=0.05)
    async with httpx.AsyncClient(transport=transport, base_url=upstream) as client:
        a = (await client.post("/")).json()["client_port"]
        await asyncio.sleep(0.2)
        b = (await client.post("/")).json()["client_port"]
    assert a != b


async def test_the_pool_caps_concurrent_exchanges(upstream: str) -> None:
    transport = WireTransport(max_connections=1)
    async with httpx.AsyncClient(transport=transport, base_url=upstream) as client:
        async with client.stream("GET", f"/blob/{8 * MiB}"):
            with pytest.raises(httpx.PoolTimeout):
                await client.post("/", timeout=httpx.Timeout(5.0, pool=0.2))
        assert (await client.post("/")).status_code == 201  # the slot came back


async def test_a_request_that_could_split_a_header_is_refused(upstream: str) -> None:
    async with httpx.AsyncClient(transport=WireTransport(), base_url=upstream) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"X-Evil": "a\r\nX-Injected: 1"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"X-Evil": "a\x1b[2Jb"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.put("/", content=_pieces(b"abc"), headers={"Content-Length": "2"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.put("/", content=_pieces(b"abc"), headers={"Content-Length": "4"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.put("/", content=_pieces(b"abc"), headers={"Content-Length": "3x"})
        assert (await client.post("/")).status_code == 201


async def test_an_unreachable_upstream_is_a_connect_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with httpx.AsyncClient(transport=WireTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


def test_a_tls_context_that_does_not_verify_the_peer_is_refused() -> None:
    lax = ssl.create_default_context()
    lax.check_hostname = False
    with pytest.raises(ValueError, match="verifies its peers"):
        WireTransport(tls=lax)
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="verifies its peers"):
        WireTransport(tls=lax)


# -- scripted upstreams: raw TCP servers that answer exactly what a test says ----------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _scripted(script: Script) -> AsyncIterator[str]:
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _answer(*responses: bytes) -> Script:
    """Return a script that reads one request head, then writes each response in turn."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part in responses:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
    return script


async def _get(url: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=WireTransport()) as client:
        return await client.get(url + "/", **kwargs)  # type: ignore[arg-type]


async def test_a_chunked_response_with_extensions_and_trailers_is_decoded() -> None:
    body = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with _scripted(_answer(body[:40], body[40:])) as url:
        resp = await _get(url)
    assert resp.status_code == 200 and resp.content == b"hello 0123456789"


async def test_interim_responses_are_skipped() -> None:
    async with _scripted(_answer(b"HTTP/1.1 100 Continue\r\n\r\n",
                                 b"HTTP/1.1 204 No Content\r\n\r\n")) as url:
        resp = await _get(url)
    assert resp.status_code == 204 and resp.content == b""


async def test_a_body_without_framing_runs_to_the_close() -> None:
    async with _scripted(_answer(b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it")) as url:
        resp = await _get(url)
    assert resp.content == b"all of it"


@pytest.mark.parametrize(("name", "response"), [
    ("garbage status line", b"HTTP/2 200 OK\r\n\r\n"),
    ("status out of range", b"HTTP/1.1 099 Odd\r\n\r\n"),
    ("header without colon", b"HTTP/1.1 200 OK\r\nBroken\r\n\r\n"),
    ("space in header name", b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"),
    ("conflicting lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
    ("negative length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    ("unknown coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("short body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
    ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ("chunk overruns",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n"),
    ("head too long", b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * (70 << 10) + b"\r\n\r\n"),
    ("closed before answering", b""),
])
async def test_a_broken_upstream_is_a_protocol_error(name: str, response: bytes) -> None:
    async with _scripted(_answer(response)) as url:
        with pytest.raises(httpx.RemoteProtocolError):
            await _get(url)


async def test_a_silent_upstream_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with _scripted(silent) as url:
        with pytest.raises(httpx.ReadTimeout):
            await _get(url, timeout=httpx.Timeout(5.0, read=0.2))


async def test_an_early_answer_stops_the_upload_and_retires_the_connection() -> None:
    """An upstream that refuses a body without reading it is heard, not fed 64 MiB more."""
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        while await reader.read(MiB):  # swallow the body, so nothing but the answer stops it
            pass

    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(64):
            produced += 1
            yield b"x" * MiB
            await asyncio.sleep(0.005)

    transport = WireTransport()
    async with _scripted(refuse) as url, httpx.AsyncClient(transport=transport) as client:
        resp = await client.put(url + "/", content=body(),
                                headers={"Content-Length": str(64 * MiB)})
        assert resp.status_code == 413 and resp.content == b"nope"
        assert produced < 64, "the transport kept sending after the upstream answered"
        assert not any(transport._idle.values()), "a connection with a half-sent body was kept"


def _keep_alive_once(then: bytes, *, linger: float) -> Script:
    """Answer one request on a persistent connection, send `then`, and hang up after `linger` s."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + then)
        await writer.drain()
        await asyncio.sleep(linger)
    return script


@pytest.mark.parametrize(("then", "linger"), [
    (b"", 0.0),  # hung up while idle
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray", 2.0),  # spoke out of turn
])
async def test_a_connection_the_upstream_dropped_or_spoiled_while_idle_is_not_reused(
        then: bytes, linger: float) -> None:
    """An upstream restarted (or misbehaving) between two requests costs a new connection,
    never a failed request or a stray answer read as the next one's."""
    async with _scripted(_keep_alive_once(then, linger=linger)) as url, \
            httpx.AsyncClient(transport=WireTransport()) as client:
        assert (await client.get(url + "/")).content == b"ok"
        await asyncio.sleep(0.1)  # the hang-up (or stray bytes) arrives while idle
        assert (await client.get(url + "/")).content == b"ok"


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n",
                                  b"HTTP/1.0 200 OK\r\n"])
async def test_an_answer_that_closes_the_connection_is_honoured(head: bytes) -> None:
    connections: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()

    async with _scripted(script) as url, httpx.AsyncClient(transport=WireTransport()) as client:
        for _ in range(3):
            assert (await client.get(url + "/")).content == b"ok"
    assert len(connections) == 3


async def test_a_cancelled_upload_frees_its_connection_slot(upstream: str) -> None:
    """A client gone mid-upload cancels the relay: the slot must come back, the socket go."""
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            started.set()
            yield b"x" * 65536
            await asyncio.sleep(0.001)

    transport = WireTransport(max_connections=1)
    async with httpx.AsyncClient(transport=transport, base_url=upstream) as client:
        task = asyncio.create_task(client.put("/", content=endless()))
        await started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        resp = await client.post("/", content=b"after", timeout=httpx.Timeout(5.0, pool=1.0))
    assert resp.json()["size"] == 5
