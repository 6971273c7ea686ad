"""The services' uvicorn protocol: request bodies reach the app whole, in order, not copied.

A real uvicorn server with `BodyProtocol` on loopback, fed by raw sockets (a body in one
piece, in many small writes, chunked, two requests on one connection), and a unit test of
the pending pieces.  The identity test fails on stock uvicorn, which hands the app a
copy of a bytearray it appended every parsed piece to.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from sessions.common._bodyproto import BodyProtocol, PendingBody
from sessions.common.serve import http_protocol
from tests.uvicorn_server import serving

MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Recording(BodyProtocol):
    """BodyProtocol that keeps the pieces the parser handed it (kept alive: ids stay unique)."""

    parsed: dict[int, bytes] = {}  # noqa: RUF012 - one server per test, reset by the fixture

    def on_body(self, body: bytes) -> None:
        _Recording.parsed[id(body)] = body
        super().on_body(body)


received: list[tuple[type, int, bool]] = []
"""(type, length, whether it is a piece the parser made) of every non-empty body received."""


async def _digest_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        if body:
            received.append((type(body), len(body), _Recording.parsed.get(id(body)) is body))
        digest.update(body)
        size += len(body)
        if not message.get("more_body"):
            break
    answer = f"{size} {digest.hexdigest()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def _server() -> AsyncIterator[int]:
    _Recording.parsed = {}
    received.clear()
    config = uvicorn.Config(_digest_app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", http=_Recording, loop="asyncio")
    async with serving(config) as port:
        yield port


def _exchange(port: int, requests: list[list[bytes]]) -> list[bytes]:
    """Send each request's parts (written one by one) on one connection; return the answers."""
    answers = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for parts in requests:
            for part in parts:
                sock.sendall(part)
            got = b""
            while b"\r\n\r\n" not in got or not _complete(got):
                piece = sock.recv(65536)
                assert piece, got
                got += piece
            answers.append(got.split(b"\r\n\r\n", 1)[1])
    return answers


def _complete(raw: bytes) -> bool:
    head, body = raw.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return len(body) >= length


def _put(body: bytes, pieces: int = 1) -> list[bytes]:
    step = max(1, -(-len(body) // pieces))
    return [b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body),
            *(body[i:i + step] for i in range(0, len(body), step))]


def _expected(body: bytes) -> bytes:
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


@pytest.mark.anyio
async def test_bodies_arrive_whole_in_order_on_one_connection() -> None:
    big = bytes(range(256)) * (12 * MiB // 256) + b"tail"
    small = b"0123456789" * 1000
    chunked = [b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
               b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]
    async with _server() as port:
        answers = await asyncio.to_thread(
            _exchange, port, [_put(big), _put(small, pieces=97), chunked, _put(b"")])
    assert answers == [_expected(big), _expected(small), _expected(b"hello world"),
                       _expected(b"")]
    assert {kind for kind, _, _ in received} == {bytes}


@pytest.mark.anyio
async def test_the_app_gets_the_parsed_pieces_themselves() -> None:
    """Fails on stock uvicorn: every piece it hands up is `bytes(bytearray)`, a copy."""
    body = b"x" * (8 * MiB)
    async with _server() as port:
        answers = await asyncio.to_thread(_exchange, port, [_put(body)])
    assert answers == [_expected(body)]
    assert sum(n for _, n, _ in received) == len(body)
    uncopied = sum(n for _, n, same in received if same)
    assert uncopied >= len(body) // 2, received  # joins happen only when pieces pile up


def test_pending_pieces_are_handed_up_as_they_are_or_joined_once() -> None:
    pending = PendingBody()
    first = b"a" * 100
    pending.add(first)
    assert len(pending) == 100
    assert bytes(pending) is first
    pending.add(b"bc")
    assert len(pending) == 102
    assert bytes(pending) == first + b"bc"


def test_services_serve_with_it_when_httptools_is_there() -> None:
    assert http_protocol() is BodyProtocol
