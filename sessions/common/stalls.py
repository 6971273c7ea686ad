"""Upload bodies that stall: a client that opens a request and sends nothing must not hold
a session's writer slot forever."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import anyio

from sessions.common.errors import RequestTimeout


async def stall_limited(source: AsyncIterable[bytes], *, per_piece: float) -> AsyncIterator[bytes]:
    """Yield source's pieces; raise RequestTimeout (408) if one takes more than per_piece seconds.

    Precondition: per_piece > 0.  The time is per piece, not per body: a slow but steady
    client is never cut off, a silent one is after `per_piece` seconds.
    """
    pieces = aiter(source)
    while True:
        try:
            with anyio.fail_after(per_piece):
                piece = await anext(pieces)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(f"no body byte arrived for {per_piece:g} s") from None
        yield piece
