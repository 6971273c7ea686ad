"""The one way services build their HTTP clients to each other.

Connections are pooled and reused (one client per upstream for the life of the
app).  httpcore reads HTTP/1.1 bodies 64 KiB at a time, which makes the pure-
Python parser run sixteen times per MiB relayed; between our own services the
bodies are MiB-sized chunks, so reads are raised to 1 MiB.  This is the only
place that touches httpcore.
"""

from __future__ import annotations

import httpcore
import httpx

READ_SIZE = 1 << 20
KEEPALIVE_EXPIRY = 4.0  # below uvicorn's 5 s keep-alive, so a reused connection is never stale


def raise_read_size() -> None:
    """Make httpcore read HTTP/1.1 bodies READ_SIZE bytes at a time (sync and async clients).

    Process-wide and idempotent; only ever raises the read size.
    """
    for conn in (httpcore.AsyncHTTP11Connection, httpcore.HTTP11Connection):
        if getattr(conn, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
            conn.READ_NUM_BYTES = READ_SIZE


def service_client(base_url: str, token: str, *, timeout: httpx.Timeout,
                   transport: httpx.AsyncBaseTransport | None = None,
                   max_connections: int = 64) -> httpx.AsyncClient:
    """Return a pooled client that sends the service token to base_url."""
    raise_read_size()
    return httpx.AsyncClient(
        base_url=base_url, transport=transport, timeout=timeout, trust_env=False,
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=max_connections,
                            max_keepalive_connections=min(32, max_connections),
                            keepalive_expiry=KEEPALIVE_EXPIRY))
