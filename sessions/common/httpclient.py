"""The one way services build their HTTP clients to each other, and the CLI's read size.

Service clients run over `WireTransport` (sessions/common/wire.py): pooled,
persistent connections that move bodies without h11's copies.  The CLI's sync
client stays on httpcore, whose HTTP/1.1 reads are raised from 64 KiB to 1 MiB
so its pure-Python parser runs once per MiB replayed.  This is the only place
that touches httpcore.
"""

from __future__ import annotations

import os

import httpcore
import httpx

from sessions.common.wire import WireTransport

READ_SIZE = 1 << 20
KEEPALIVE_EXPIRY = 4.0  # below uvicorn's 5 s keep-alive, so a reused connection is never stale


def raise_read_size() -> None:
    """Make httpcore read HTTP/1.1 bodies READ_SIZE bytes at a time (the CLI's sync client).

    Process-wide and idempotent; only ever raises the read size.
    """
    if getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        httpcore.HTTP11Connection.READ_NUM_BYTES = READ_SIZE


def service_client(base_url: str, token: str, *, timeout: httpx.Timeout,
                   transport: httpx.AsyncBaseTransport | None = None,
                   max_connections: int = 64) -> httpx.AsyncClient:
    """Return a pooled client that sends the service token to base_url.

    `transport` replaces the wire transport (tests: ASGI or mock transports).
    """
    kind = os.environ.get("LUCID_HTTP_TRANSPORT", "wire")
    if transport is None and kind == "httpx":
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=min(32, max_connections),
            keepalive_expiry=KEEPALIVE_EXPIRY))
    if transport is None and kind == "aiohttp":
        from sessions.common._aiohttp import AiohttpTransport
        transport = AiohttpTransport(max_connections=max_connections,
                                     keepalive_expiry=KEEPALIVE_EXPIRY)
    if transport is None:
        transport = WireTransport(max_connections=max_connections,
                                  max_idle=min(32, max_connections),
                                  keepalive_expiry=KEEPALIVE_EXPIRY)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout,
                             trust_env=False, headers={"Authorization": f"Bearer {token}"})
