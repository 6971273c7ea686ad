"""Streaming both ways without buffering: request bodies up, response bodies down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from sessions.common.errors import PayloadTooLarge
from sessions.common.web import CutOnErrorResponse

FORWARD_AHEAD = 4 << 20
"""Bytes of a client's upload read ahead while the previous write to the processor is pending."""


async def limited_body(request: Request, *, limit: int,
                       count: Callable[[int], None]) -> AsyncIterator[bytes]:
    """Yield the request body as it arrives; raise PayloadTooLarge once it exceeds limit bytes.

    The server hands the body over in socket-read pieces (often 64 KiB), and each
    piece forwarded costs a trip through the HTTP client.  So a reader task runs
    ahead (up to FORWARD_AHEAD bytes) while a write to the processor is pending,
    and each write takes everything that has arrived meanwhile.  Nothing waits for
    a batch to fill: a live recorder's bytes move on as soon as the processor can
    take them, so a chunk is committed as soon as its last byte arrives.
    A client that disconnects mid-body makes Starlette raise ClientDisconnect here,
    which aborts the upstream request: the processor discards the truncated body.
    """
    ahead = _ReadAhead(request, limit=limit, count=count)
    reader = asyncio.create_task(ahead.run())
    try:
        while (batch := await ahead.take()) is not None:
            yield batch
    finally:
        reader.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(reader, return_exceptions=True)


class _ReadAhead:
    """The body read ahead into a bounded list of pieces; one reader, one taker."""

    def __init__(self, request: Request, *, limit: int, count: Callable[[int], None]) -> None:
        self._request, self._limit, self._count = request, limit, count
        self._pieces: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()

    async def run(self) -> None:
        received = 0
        try:
            async for piece in self._request.stream():
                if not piece:
                    continue
                received += len(piece)
                if received > self._limit:
                    raise PayloadTooLarge(f"one upload request may carry at most "
                                          f"{self._limit} bytes")
                self._count(len(piece))
                self._pieces.append(piece)
                self._size += len(piece)
                self._arrived.set()
                while self._size >= FORWARD_AHEAD:
                    self._taken.clear()
                    await self._taken.wait()
        except Exception as exc:  # handed to the taker, which raises it in the request's task
            self._error = exc
        finally:
            self._done = True
            self._arrived.set()

    async def take(self) -> bytes | None:
        """Return all bytes read so far that were not taken yet, None at the end."""
        while not self._pieces:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            self._arrived.clear()
            await self._arrived.wait()
        pieces, self._pieces, self._size = self._pieces, [], 0
        self._taken.set()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class RelayResponse(CutOnErrorResponse):
    """Streams an upstream body; always closes the upstream, and cuts the connection on failure.

    If the body iterator raises after the headers went out, the connection is
    cut: the client sees a truncated body (short of Content-Length), never a
    clean but short response.
    """

    def __init__(self, content: AsyncIterable[bytes], *, status_code: int,
                 headers: Mapping[str, str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # the client went away; there is nobody left to tell
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()
