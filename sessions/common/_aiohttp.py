"""An httpx transport over aiohttp's client (llhttp, a C parser), for the transport measurement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it: pieces as they arrived; release on close."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._resp.content.iter_any():
                yield piece
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout("the upstream did not answer in time") from exc
        finally:
            self._resp.release()

    async def aclose(self) -> None:
        self._resp.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 transport over one aiohttp ClientSession (its own connection pool)."""

    def __init__(self, *, max_connections: int = 64, keepalive_expiry: float = 4.0) -> None:
        self._limit, self._expiry = max_connections, keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=self._expiry,
                                             use_dns_cache=False, ssl=False)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("User-Agent",
                                                                     "Accept-Encoding"))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol("the service transport speaks plain http only")
        t = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(total=None, connect=t.get("pool"),
                                        sock_connect=t.get("connect"), sock_read=t.get("read"))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() != b"host"]
        data = request.stream if request.headers.get("content-length") != "0" else None
        try:
            resp = await self._open().request(
                request.method, str(request.url), headers=headers, data=data, timeout=timeout,
                allow_redirects=False, compress=None, chunked=None, skip_auto_headers=None)
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise httpx.ReadTimeout("the upstream did not answer in time") from exc
        return httpx.Response(resp.status, headers=list(resp.raw_headers), stream=_Body(resp),
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": (resp.reason or "").encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
