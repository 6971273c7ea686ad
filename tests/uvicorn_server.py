"""A real uvicorn server inside a test's event loop, on loopback, until the block ends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn


@asynccontextmanager
async def serving(config: uvicorn.Config, sockets: list[socket.socket] | None = None
                  ) -> AsyncIterator[int]:
    """Serve `config` (on `sockets` if given) until the block ends; yield its first TCP port."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield next(s.getsockname()[1] for srv in server.servers for s in srv.sockets
                   if s.family in (socket.AF_INET, socket.AF_INET6))
    finally:
        server.should_exit = True
        await task
