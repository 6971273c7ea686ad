"""Streaming both ways without buffering: request bodies up, response bodies down."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping

import anyio
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from sessions.common.bodies import client_gone_is_fine, request_body
from sessions.common.errors import PayloadTooLarge
from sessions.common.web import CutOnErrorResponse


async def limited_body(request: Request, *, limit: int, count: Callable[[int], None],
                       stall_timeout: float) -> AsyncIterator[bytes]:
    """Yield the request body as it arrives; raise PayloadTooLarge once it exceeds limit bytes.

    A body that sends nothing for stall_timeout seconds raises RequestTimeout (408), which
    aborts the upstream request like a disconnect: the processor frees the writer slot.

    Each piece goes upstream as it came off the socket: the service transport
    queues it without copying and only waits once WRITE_AHEAD is pending, so the
    client's bytes keep being read while earlier ones drain to the processor.
    A client that disconnects mid-body raises TruncatedBody (400) here, which aborts
    the upstream request: the processor discards the truncated body.
    """
    received = 0
    async for piece in request_body(request, stall_timeout=stall_timeout):
        received += len(piece)
        if received > limit:
            raise PayloadTooLarge(f"one upload request may carry at most {limit} bytes")
        count(len(piece))
        yield piece


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
            with client_gone_is_fine():
                await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()
