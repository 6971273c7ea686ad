"""An HTTP/1.1 transport for httpx between our own services, built for MiB-sized bodies.

httpcore moves every body through h11: each piece sent is joined into a new
object, each piece received is copied two or three times through h11's receive
buffer, and a pure-Python state machine runs per piece.  Between our services
nearly every byte is bulk (uploads relayed, sealed chunks stored and read back),
so `WireTransport` writes body pieces straight to the socket and hands received
pieces up as the event loop delivered them.  It is kept (rather than httpx's own
transport or aiohttp's) because it costs the services measurably less CPU per GB:
README, "Service transport decision".  `LUCID_HTTP_TRANSPORT=httpx` falls back to
httpx's own transport (sessions/common/httpclient.py).

It speaks only what the services need: HTTP/1.1 to our own upstreams, in the clear
or over TLS (`https://`: the peer verified by the transport's `ssl.SSLContext`, host
name included), persistent connections, Content-Length or chunked bodies both ways.  It reads
responses as h11 does (tests/common/test_wire_differential.py holds it to h11's verdicts)
and is stricter where h11 is lenient: it refuses Content-Length together with
Transfer-Encoding (RFC 9112 section 6.3), any transfer coding but chunked, control
characters in field values and reason phrases, HTTP major versions other than 1,
and bare LF line ends.  It fails
the way httpx's own transport does (`httpx.ConnectError`, `ReadError`,
`RemoteProtocolError`, the timeouts...), so callers keep translating errors in
one place.  The public client API stays httpx's; tests still inject
`httpx.MockTransport` or `httpx.ASGITransport` instead (STYLE trait 9).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import cast

import httpx

from sessions.common import _http1
from sessions.common._http1 import (
    MAX_HEAD,
    _checked_framing,
    _fields,
    _framing,
    _head,
    parse_response_head,
)
from sessions.common.serve import widen_unix_send_buffer
from sessions.common.tls import tls_failure

__all__ = ["WireTransport"]

READ_AHEAD = 256 << 10
"""Received bytes buffered before the socket stops being read (a slow consumer).

With WRITE_AHEAD, this bounds what one exchange holds in memory, so it sizes the
gateway under 32 concurrent relays (tests/e2e/test_memory_budget.py); less
read-ahead means more pauses and resumes of the socket."""
WRITE_AHEAD = 256 << 10
"""Bytes queued in the socket's transport before a body write waits for it to drain."""
_CHUNK_LINE = 4096

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*")
"""A chunk-size line without its CRLF; extensions are skipped unread, as h11 does."""


class _Wire(asyncio.Protocol):
    """One connection (TCP or Unix socket): bytes received wait in a queue of pieces;
    writes are flow-controlled."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._lost: BaseException | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self.key: tuple[str, str, int] = ("", "", 0)
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=WRITE_AHEAD)
        widen_unix_send_buffer(self.transport)

    def data_received(self, data: bytes) -> None:
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > READ_AHEAD and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # close the transport: we never write after the server stops

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc or ConnectionResetError("the connection was closed")
        self._wake_reader()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Return whether the connection cannot carry another exchange."""
        return self._eof or self.transport is None or self.transport.is_closing()

    @property
    def has_incoming(self) -> bool:
        """Return whether the server has sent anything (or hung up) not read yet."""
        return bool(self._pieces) or self._eof

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue data on the socket; raise httpx.WriteError if the connection is gone."""
        if self.transport is None or self._lost is not None or self.transport.is_closing():
            raise httpx.WriteError("the connection closed while sending the request")
        self.transport.write(data)

    async def drain(self, seconds: float | None) -> None:
        """Return once the queued bytes are below WRITE_AHEAD; raise WriteError/WriteTimeout."""
        if self._lost is not None:
            raise httpx.WriteError("the connection closed while sending the request")
        if not self._write_paused:
            return
        waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        async with _deadline(seconds, httpx.WriteTimeout, "the upstream stopped reading"):
            await waiter
        if self._lost is not None:
            raise httpx.WriteError("the connection closed while sending the request")

    # -- reading -----------------------------------------------------------------------------

    async def read(self, limit: int, seconds: float | None) -> bytes:
        """Return the next received piece, at most `limit` bytes; b"" once the server hung up."""
        while not self._pieces:
            if self._eof:
                return b""
            waiter = self._data_waiter = asyncio.get_running_loop().create_future()
            async with _deadline(seconds, httpx.ReadTimeout, "the upstream did not answer in time"):
                await waiter
        piece = self._pieces.popleft()
        if len(piece) > limit:
            piece, rest = piece[:limit], piece[limit:]
            self._pieces.appendleft(rest)
        self._buffered -= len(piece)
        if self._read_paused and self._buffered <= READ_AHEAD // 2 and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return piece

    def unread(self, data: bytes) -> None:
        """Put bytes read too far back in front of the queue."""
        if data:
            self._pieces.appendleft(data)
            self._buffered += len(data)

    async def read_until(self, mark: bytes, *, limit: int, seconds: float | None) -> bytes:
        """Return the bytes up to and including `mark`; raise RemoteProtocolError past `limit`."""
        buf = bytearray()
        while True:
            piece = await self.read(limit + len(mark), seconds)
            if not piece:
                raise httpx.RemoteProtocolError("the upstream closed the connection mid-message")
            start = max(0, len(buf) - len(mark) + 1)
            buf += piece
            end = buf.find(mark, start)
            if end >= 0:
                end += len(mark)
                self.unread(bytes(buf[end:]))
                return bytes(buf[:end])
            if len(buf) > limit:
                raise httpx.RemoteProtocolError("the upstream sent an over-long line or head")


@asynccontextmanager
async def _deadline(seconds: float | None, error: type[httpx.TimeoutException],
                    message: str) -> AsyncIterator[None]:
    """Raise `error` if the body of the block takes longer than `seconds` (None: never)."""
    if seconds is None:
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise error(message) from None


class _Response(httpx.AsyncByteStream):
    """A response body read off its connection; returns the connection to the pool when done."""

    def __init__(self, pool: WireTransport, wire: _Wire, *, length: int | None, chunked: bool,
                 keep_alive: bool, timeout: float | None) -> None:
        self._pool, self._wire = pool, wire
        self._length, self._chunked = length, chunked
        self._keep_alive, self._timeout = keep_alive, timeout
        self._done = length == 0 and not chunked  # nothing to read: reusable even if unread
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._released:
            raise httpx.StreamClosed()
        try:
            if self._chunked:
                async for piece in self._chunks():
                    yield piece
            elif self._length is not None:
                async for piece in self._exactly(self._length):
                    yield piece
            else:
                while piece := await self._wire.read(READ_AHEAD, self._timeout):
                    yield piece
                self._keep_alive = False
            self._done = True
        finally:
            self._release()

    async def _exactly(self, n: int) -> AsyncIterator[bytes]:
        while n > 0:
            piece = await self._wire.read(n, self._timeout)
            if not piece:
                raise httpx.RemoteProtocolError("the upstream's body ended before its length")
            n -= len(piece)
            yield piece

    async def _chunks(self) -> AsyncIterator[bytes]:
        """Yield the data of a chunked body (RFC 9112 section 7.1); trailers are discarded."""
        while True:
            line = await self._wire.read_until(b"\r\n", limit=_CHUNK_LINE, seconds=self._timeout)
            match = _CHUNK_SIZE.fullmatch(line[:-2])
            if match is None:
                raise httpx.RemoteProtocolError("the upstream sent a malformed chunk size")
            size = int(match.group(1), 16)
            if size == 0:
                await self._trailers()
                return
            async for piece in self._exactly(size):
                yield piece
            if await self._wire.read_until(b"\r\n", limit=2, seconds=self._timeout) != b"\r\n":
                raise httpx.RemoteProtocolError("the upstream's chunk overran its size")

    async def _trailers(self) -> None:
        """Read the trailer section to its blank line; check it like a head, then drop it."""
        section = bytearray()
        while (line := await self._wire.read_until(b"\r\n", limit=MAX_HEAD,
                                                   seconds=self._timeout)) != b"\r\n":
            section += line
            if len(section) > MAX_HEAD:
                raise httpx.RemoteProtocolError("the upstream sent over-long trailers")
        if section:
            with _httpx_errors():
                _checked_framing(_fields(bytes(section[:-2]).split(b"\r\n")))

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._checkin(self._wire, reusable=self._done and self._keep_alive)


class WireTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 transport (http:// or https://) with a pool of persistent connections per upstream.

    At most `max_connections` exchanges run at once (more wait up to the pool
    timeout); at most `max_idle` idle connections are kept, each for at most
    `keepalive_expiry` seconds, which must stay below the upstream's own
    keep-alive timeout (uvicorn: 5 s) so a reused connection is never half-closed.
    An https:// upstream is verified with `tls` (None: the system's CAs, host name
    checked); a context that does not verify the peer is refused.  With `uds` (a Unix
    socket's path) every connection goes to that socket instead of the URL's host and
    port, which then only name the upstream (plain http only, as httpx's `uds`).
    """

    def __init__(self, *, max_connections: int = 64, max_idle: int = 32,
                 keepalive_expiry: float = 4.0, tls: ssl.SSLContext | None = None,
                 uds: str | None = None) -> None:
        if max_connections < 1 or max_idle < 0 or keepalive_expiry <= 0:
            raise ValueError("connection limits must be positive")
        if uds is not None and tls is not None:
            raise ValueError("a Unix socket upstream is plain http: no TLS context")
        if tls is not None and (tls.verify_mode is not ssl.CERT_REQUIRED
                                or not tls.check_hostname):
            raise ValueError("the service transport verifies its peers: the TLS context must "
                             "require a certificate and check the host name")
        self._max_connections, self._max_idle = max_connections, max_idle
        self._expiry = keepalive_expiry
        self._tls = tls
        self._uds = uds
        self._idle: dict[tuple[str, str, int], list[_Wire]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol("the service transport speaks http and https only")
        if self._uds is not None and request.url.scheme != "http":
            raise httpx.UnsupportedProtocol("a Unix socket upstream is plain http")
        timeouts = request.extensions.get("timeout", {})
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        async with _deadline(timeouts.get("pool"), httpx.PoolTimeout,
                             "no connection to the upstream became free in time"):
            await self._slots.acquire()
        wire: _Wire | None = None
        try:
            wire = await self._checkout(request, timeouts.get("connect"))
            return await _exchange(self, wire, request, timeouts)
        except BaseException:
            if wire is not None:
                wire.close()
            self._slots.release()
            raise

    async def _checkout(self, request: httpx.Request, seconds: float | None) -> _Wire:
        """Return an idle live connection to the request's host, or a new one."""
        scheme, host = request.url.scheme, request.url.host
        key = (scheme, host, request.url.port or (443 if scheme == "https" else 80))
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle:
            wire = idle.pop()
            if not wire.closed and not wire.has_incoming and now - wire.idle_since < self._expiry:
                return wire
            wire.close()
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with _deadline(seconds, httpx.ConnectTimeout, "the upstream did not accept "
                                 "a connection in time"):
                if self._uds is not None:
                    _, wire = await loop.create_unix_connection(_Wire, self._uds)
                else:
                    _, wire = await loop.create_connection(
                        _Wire, host, key[2], ssl=tls, server_hostname=host if tls else None)
        except OSError as exc:
            why = tls_failure(exc)
            where = f"the Unix socket {self._uds}" if self._uds else f"{host}:{key[2]}"
            raise httpx.ConnectError(f"cannot connect to {where}"
                                     + (f": {why}" if why else "")) from exc
        wire.key = key
        return wire

    def _checkin(self, wire: _Wire, *, reusable: bool) -> None:
        """Take a connection back after its exchange: keep it idle, or close it."""
        if self._slots is not None:
            self._slots.release()
        if reusable and not self._closed and not wire.closed:
            idle = self._idle.setdefault(wire.key, [])
            if len(idle) < self._max_idle:
                wire.idle_since = time.monotonic()
                idle.append(wire)
                return
        wire.close()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for wire in idle:
                wire.close()
        self._idle.clear()


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise the head codec's protocol errors (`_http1`) as httpx's, as a transport must."""
    try:
        yield
    except _http1.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc
    except _http1.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc


async def _exchange(pool: WireTransport, wire: _Wire, request: httpx.Request,
                    timeouts: dict[str, float | None]) -> httpx.Response:
    """Send one request on `wire` and return the response, its body still on the wire."""
    complete = await _send(wire, request, timeouts.get("write"))
    return await _receive(pool, wire, request.method, seconds=timeouts.get("read"),
                          complete=complete)


async def _receive(pool: WireTransport, wire: _Wire, method: str, *, seconds: float | None,
                   complete: bool) -> httpx.Response:
    """Return the response read off `wire` (interim ones skipped), its body still on the wire.

    Raises httpx.RemoteProtocolError on a malformed head; the body raises it when read.
    """
    while True:
        head = await wire.read_until(b"\r\n\r\n", limit=MAX_HEAD, seconds=seconds)
        with _httpx_errors():
            status, reason, headers, keep_alive = parse_response_head(head)
        length, chunked = _framing(method, status, headers)
        if status >= 200:
            break
    body = _Response(pool, wire, length=length, chunked=chunked,
                     keep_alive=keep_alive and complete, timeout=seconds)
    return httpx.Response(status, headers=headers, stream=body,
                          extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})


async def _send(wire: _Wire, request: httpx.Request, seconds: float | None) -> bool:
    """Write the request; return False if the server answered before the body was all sent.

    A server may refuse a request (too large, wrong offset) without reading its
    body.  Sending stops then, the answer is read, and the connection is not reused.
    """
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise httpx.LocalProtocolError("the request's Content-Length is not a number")
    length = int(declared)
    if not isinstance(request.stream, httpx.AsyncByteStream):
        raise httpx.LocalProtocolError("the service transport sends async bodies only")
    with _httpx_errors():
        wire.write(_head(request))
    sent = 0
    try:
        async for piece in request.stream:
            if not piece:
                continue
            if wire.has_incoming:
                return False
            sent += len(piece)
            if chunked:
                wire.write(b"%x\r\n" % len(piece))
                wire.write(piece)
                wire.write(b"\r\n")
            elif sent > length:
                raise httpx.LocalProtocolError("the request body is longer than its length")
            else:
                wire.write(piece)
            await wire.drain(seconds)
    except httpx.WriteError:
        if wire.has_incoming:  # it answered, then hung up: read the answer
            return False
        raise
    if chunked:
        wire.write(b"0\r\n\r\n")
    elif sent != length:
        raise httpx.LocalProtocolError("the request body is shorter than its length")
    await wire.drain(seconds)
    return True
