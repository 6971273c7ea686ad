"""Request bodies as the domain sees them: an async iterable of bytes that ends, or fails with
the domain's own error, never with a web framework's exception.

`request_body` is the one place where Starlette's `ClientDisconnect` of a request body
becomes `TruncatedBody` (400 `truncated_body`), and a body that stalls becomes
`RequestTimeout` (408 `request_timeout`).  `client_gone_is_fine` is the one place where
a disconnect while a response streams out is let go: nobody is left to tell.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
from starlette.requests import ClientDisconnect, Request

from sessions.common.errors import RequestTimeout, TruncatedBody

GONE = "the client went away before the body ended"


async def request_body(request: Request, *, stall_timeout: float | None = None
                       ) -> AsyncIterator[bytes]:
    """Yield the request body's non-empty pieces as they come off the socket, not copied.

    Raises TruncatedBody if the client disconnects before the body ended, and, with a
    stall_timeout (> 0 seconds), RequestTimeout when one piece takes longer than that.
    The time is per piece, not per body: a slow but steady client is never cut off.
    """
    pieces = request.stream()
    try:
        while True:
            try:
                if stall_timeout is None:
                    piece = await anext(pieces)
                else:
                    with anyio.fail_after(stall_timeout):
                        piece = await anext(pieces)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestTimeout(f"no body byte arrived for {stall_timeout:g} s") from None
            if piece:
                yield piece
    except ClientDisconnect:
        raise TruncatedBody(GONE) from None


@contextmanager
def client_gone_is_fine() -> Iterator[None]:
    """Let a client's disconnect while a response streams out end the response quietly."""
    try:
        yield
    except ClientDisconnect:
        pass
