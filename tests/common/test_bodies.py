"""The one body-stream helper: a client disconnect becomes the domain's `TruncatedBody`.

Unit tests of `sessions.common.bodies` on a bare Starlette request, then the processor's
and storage's answers to a client that goes away mid-body (raw ASGI, as a server would
deliver it), with every status and error code as before.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request

from sessions.common.bodies import client_gone_is_fine, request_body
from sessions.common.errors import RequestTimeout, TruncatedBody
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

pytestmark = pytest.mark.anyio
MIB = 1 << 20
Message = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _receiver(messages: Iterable[Message], *, stall: float = 0.0) -> Any:
    pending = iter(messages)

    async def receive() -> Message:
        try:
            return next(pending)
        except StopIteration:
            await asyncio.sleep(stall)  # a client that sends nothing more
            return {"type": "http.disconnect"}
    return receive


def _request(messages: Iterable[Message], *, stall: float = 0.0) -> Request:
    scope = {"type": "http", "method": "PUT", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, _receiver(messages, stall=stall))


def _piece(data: bytes, *, more: bool = True) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_pieces_pass_as_received_not_copied_and_empty_ones_are_dropped() -> None:
    first, second = b"a" * 1000, b"b" * 10
    got = [p async for p in request_body(_request([_piece(first), _piece(b""),
                                                    _piece(second, more=False)]))]
    assert got == [first, second]
    assert got[0] is first and got[1] is second


async def test_a_disconnect_mid_body_is_a_truncated_body() -> None:
    got: list[bytes] = []
    with pytest.raises(TruncatedBody) as info:
        async for piece in request_body(_request([_piece(b"x" * 100),
                                                  {"type": "http.disconnect"}])):
            got.append(piece)
    assert got == [b"x" * 100]  # what arrived before the client went is still handed on
    assert (info.value.status, info.value.code) == (400, "truncated_body")
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_a_stalled_body_is_a_request_timeout() -> None:
    body = request_body(_request([_piece(b"x")], stall=5.0), stall_timeout=0.05)
    assert await anext(body) == b"x"
    with pytest.raises(RequestTimeout) as info:
        await anext(body)
    assert (info.value.status, info.value.code) == (408, "request_timeout")


async def test_the_timeout_is_taken_back_so_the_task_goes_on_uncancelled() -> None:
    body = request_body(_request([], stall=5.0), stall_timeout=0.05)
    with pytest.raises(RequestTimeout):
        await anext(body)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # not cancelled again


async def test_time_the_consumer_spends_between_pieces_does_not_count() -> None:
    pieces = [_piece(b"p%d" % i) for i in range(3)] + [_piece(b"end", more=False)]
    got = []
    async for piece in request_body(_request(pieces), stall_timeout=0.05):
        got.append(piece)
        await asyncio.sleep(0.12)  # e.g. the upstream drains slowly: the client is not late
    assert got == [b"p0", b"p1", b"p2", b"end"]


async def test_a_body_that_waits_a_little_under_the_timeout_on_every_piece_passes() -> None:
    async def receive_slowly() -> Message:
        await asyncio.sleep(0.03)
        return next(messages)
    messages = iter([_piece(b"a"), _piece(b"b"), _piece(b"c"), _piece(b"d", more=False)])
    scope = {"type": "http", "method": "PUT", "path": "/", "headers": [], "query_string": b""}
    got = [p async for p in request_body(Request(scope, receive_slowly), stall_timeout=0.08)]
    assert got == [b"a", b"b", b"c", b"d"]  # 0.12 s in all: the time is per piece


async def test_without_a_stall_timeout_a_slow_body_is_waited_for() -> None:
    body = request_body(_request([_piece(b"x")], stall=0.2))
    assert await anext(body) == b"x"
    with pytest.raises(TruncatedBody):  # the client then went away: not a timeout
        await anext(body)


def test_a_response_cut_by_the_client_ends_quietly_and_nothing_else_does() -> None:
    with client_gone_is_fine():
        raise ClientDisconnect()
    with pytest.raises(OSError), client_gone_is_fine():
        raise OSError("another failure")


# -- the services' answers -------------------------------------------------------------------


async def _call(app: FastAPI, method: str, path: str, headers: dict[str, str],
                messages: list[Message]) -> tuple[int, bytes]:
    """Return (status, body) of a raw ASGI request whose body is `messages`."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("svc", 80),
             "client": ("127.0.0.1", 5000), "state": {},
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, _receiver(messages), send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


@pytest.fixture
async def internal(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, FastAPI, str]]:
    """Storage and a processor on it (1 MiB chunks), lifespans run; and the service token."""
    common: dict[str, Any] = {"data_dir": tmp_path}
    storage = storage_app(StorageSettings(**common))
    processor = processor_app(ProcessorSettings(**common, chunk_size=MIB,
                                                storage_url="http://storage"),
                              storage_transport=httpx.ASGITransport(app=storage))
    async with AsyncExitStack() as stack:
        for app in (storage, processor):
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield storage, processor, (tmp_path / "secrets" / "service.token").read_text().strip()


async def test_the_processor_commits_what_arrived_and_answers_truncated_body(
        internal: tuple[FastAPI, FastAPI, str]) -> None:
    _, processor, token = internal
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=processor),
                                 base_url="http://processor/internal/v1", headers=auth) as c:
        sid = (await c.post("/sessions", json={"labels": {}})).json()["id"]
        sent = MIB + 100
        status, body = await _call(processor, "PATCH", f"/internal/v1/sessions/{sid}/upload", {
            **auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(2 * MIB)}, [_piece(b"x" * sent), {"type": "http.disconnect"}])
        assert status == 400
        answer = httpx.Response(400, content=body).json()
        assert answer["error"] == "truncated_body" and answer["offset"] == sent
        session = (await c.get(f"/sessions/{sid}")).json()
        assert (session["offset"], session["chunk_count"]) == (sent, 2)


async def test_storage_refuses_a_chunk_whose_client_went_away(
        internal: tuple[FastAPI, FastAPI, str]) -> None:
    storage, processor, token = internal
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=processor),
                                 base_url="http://processor/internal/v1", headers=auth) as c:
        sid = (await c.post("/sessions", json={"labels": {}})).json()["id"]
    data = b"s" * 4096
    status, body = await _call(storage, "PUT", f"/internal/v1/sessions/{sid}/chunks/0", {
        **auth, "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
        "X-Lucid-Leaf-Hash": hashlib.sha256(b"\x00" + data).hexdigest()},
        [_piece(data[:1000]), {"type": "http.disconnect"}])
    assert status == 400
    assert httpx.Response(400, content=body).json()["error"] == "truncated_body"
    assert not list(storage.state.resources.chunkstore.session_dir(sid).glob("*"))
