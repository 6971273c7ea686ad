"""Request bodies as the domain sees them: an async iterable of bytes that ends, or fails with
the domain's own error, never with a web framework's exception.

`request_body` is the one place where Starlette's `ClientDisconnect` of a request body
becomes `TruncatedBody` (400 `truncated_body`), and a body that stalls becomes
`RequestTimeout` (408 `request_timeout`).  `client_gone_is_fine` is the one place where
a disconnect while a response streams out is let go: nobody is left to tell.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from starlette.requests import ClientDisconnect, Request

from sessions.common.errors import RequestTimeout, TruncatedBody

GONE = "the client went away before the body ended"


async def request_body(request: Request, *, stall_timeout: float | None = None
                       ) -> AsyncIterator[bytes]:
    """Yield the request body's non-empty pieces as they come off the socket, not copied.

    Raises TruncatedBody if the client disconnects before the body ended, and, with a
    stall_timeout (> 0 seconds), RequestTimeout when one piece takes longer than that.
    The time is per piece, not per body: a slow but steady client is never cut off,
    and time spent by the consumer between pieces does not count.
    """
    pieces = request.stream()
    watch = None if stall_timeout is None else _StallWatch(stall_timeout)
    try:
        while True:
            if watch is not None:
                watch.waiting()
            try:
                piece = await anext(pieces)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if watch is not None and watch.fired():
                    raise RequestTimeout(f"no body byte arrived for {stall_timeout:g} s"
                                         ) from None
                raise
            if watch is not None:
                watch.arrived()
            if piece:
                yield piece
    except ClientDisconnect:
        raise TruncatedBody(GONE) from None
    finally:
        if watch is not None:
            watch.stop()


class _StallWatch:
    """Cancels the waiting task once one wait for a piece has lasted `seconds`.

    One timer for the whole body, moved only when it fires, instead of a cancel scope
    and a timer per piece, which every upload paid on every piece.  The cancellation it
    causes is taken back (`Task.uncancel`) where it is turned into RequestTimeout.
    """

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._since: float | None = None  # when the current wait began; None: not waiting
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False

    def waiting(self) -> None:
        self._since = self._loop.time()
        if self._timer is None:
            self._task = asyncio.current_task()
            self._timer = self._loop.call_at(self._since + self._seconds, self._check)

    def arrived(self) -> None:
        self._since = None

    def _check(self) -> None:
        now, since = self._loop.time(), self._since
        if since is not None and now - since >= self._seconds and self._task is not None:
            self._fired = True
            self._timer = None
            self._task.cancel()
            return
        start = now if since is None else since
        self._timer = self._loop.call_at(start + self._seconds, self._check)

    def fired(self) -> bool:
        """Return whether this watch cancelled the task, taking that cancellation back."""
        if not self._fired or self._task is None:
            return False
        self._task.uncancel()
        return True

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@contextmanager
def client_gone_is_fine() -> Iterator[None]:
    """Let a client's disconnect while a response streams out end the response quietly."""
    try:
        yield
    except ClientDisconnect:
        pass
