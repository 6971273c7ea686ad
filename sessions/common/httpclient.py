"""The one way services build their HTTP clients to each other, and the CLI's read size.

Service clients run over `WireTransport` (sessions/common/_wire.py): pooled,
persistent connections that move bodies without h11's copies.  The setting
`LUCID_HTTP_TRANSPORT=httpx` puts httpx's own transport in its place (the
fallback, should the wire transport ever misbehave).  The CLI's sync client
stays on httpcore, whose HTTP/1.1 reads are raised from 64 KiB to 1 MiB so its
pure-Python parser runs once per MiB replayed.  This is the only place that
touches httpcore.
"""

from __future__ import annotations

import ssl

import httpcore
import httpx

from sessions.common._wire import WireTransport
from sessions.common.settings import Transport

__all__ = ["KEEPALIVE_EXPIRY", "READ_SIZE", "raise_read_size", "service_client",
           "service_transport"]

READ_SIZE = 1 << 20
KEEPALIVE_EXPIRY = 4.0  # below uvicorn's 5 s keep-alive, so a reused connection is never stale


def raise_read_size() -> None:
    """Make httpcore read HTTP/1.1 bodies READ_SIZE bytes at a time (the CLI's sync client).

    Process-wide and idempotent; only ever raises the read size.
    """
    if getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        httpcore.HTTP11Connection.READ_NUM_BYTES = READ_SIZE


def service_transport(kind: Transport, *, max_connections: int,
                      tls: ssl.SSLContext | None = None,
                      uds: str | None = None) -> httpx.AsyncBaseTransport:
    """Return a pooled transport of the given kind, at most max_connections open.

    An https:// upstream is verified with `tls` (None: the system's CAs; see
    sessions/common/tls.py), chain and host name, by either kind.  With `uds` the
    connections go to that Unix socket (plain http), by either kind.
    """
    max_idle = min(32, max_connections)
    if kind is Transport.HTTPX:
        return httpx.AsyncHTTPTransport(
            verify=tls if tls is not None else ssl.create_default_context(), uds=uds,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_idle,
                                keepalive_expiry=KEEPALIVE_EXPIRY))
    return WireTransport(max_connections=max_connections, max_idle=max_idle,
                         keepalive_expiry=KEEPALIVE_EXPIRY, tls=tls, uds=uds)


def service_client(base_url: str, token: str, *, timeout: httpx.Timeout,
                   transport: httpx.AsyncBaseTransport | None = None,
                   kind: Transport = Transport.WIRE,
                   max_connections: int = 64,
                   tls: ssl.SSLContext | None = None,
                   uds: str | None = None) -> httpx.AsyncClient:
    """Return a pooled client that sends the service token to base_url.

    It runs over a `kind` transport (the `http_transport` setting), verifying an
    https:// upstream with `tls`, or reaching the upstream on the Unix socket `uds`,
    unless `transport` replaces it (tests: ASGI or mock transports).
    """
    if transport is None:
        transport = service_transport(kind, max_connections=max_connections, tls=tls, uds=uds)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout,
                             trust_env=False, headers={"Authorization": f"Bearer {token}"})
