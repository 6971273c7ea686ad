"""An HTTP/1.1 transport for httpx between our own services, built for MiB-sized bodies.

httpcore moves every body through h11: each piece sent is joined into a new
object, each piece received is copied two or three times through h11's receive
buffer, and a pure-Python state machine runs per piece.  Between our services
nearly every byte is bulk (uploads relayed, sealed chunks stored and read back),
so `WireTransport` writes body pieces straight to the socket and hands received
pieces up as the event loop delivered them.  Measured on a 1 GiB upload relayed
by a bare uvicorn app: 1.4-1.7 CPU s through httpcore, 1.0 through raw writes.

It speaks only what the services need: plain HTTP/1.1 to our own upstreams,
persistent connections, Content-Length or chunked bodies both ways.  It fails
the way httpx's own transport does (`httpx.ConnectError`, `ReadError`,
`RemoteProtocolError`, the timeouts...), so callers keep translating errors in
one place.  The public client API stays httpx's; tests still inject
`httpx.MockTransport` or `httpx.ASGITransport` instead (STYLE trait 9).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import httpx

__all__ = ["MAX_HEAD", "WireTransport", "parse_response_head"]

MAX_HEAD = 64 << 10
"""Longest response head (status line and headers) accepted."""
READ_AHEAD = 2 << 20
"""Received bytes buffered before the socket stops being read (a slow consumer).

With WRITE_AHEAD, this bounds what one exchange holds in memory.  A/B against
4 MiB each (1 GiB uploads and replays, alternated): the same CPU and time;
1 MiB of read-ahead made replay ~5 % slower (more pauses and resumes)."""
WRITE_AHEAD = 1 << 20
"""Bytes queued in the socket's transport before a body write waits for it to drain."""
_CHUNK_LINE = 4096

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\r\n]*)?")
_FORBIDDEN_IN_HEADERS = re.compile(rb"[\r\n\0]")


class _Wire(asyncio.Protocol):
    """One TCP connection: bytes received wait in a queue of pieces; writes are flow-controlled."""

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
        self.key: tuple[str, int] = ("", 0)
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=WRITE_AHEAD)

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
                while await self._wire.read_until(b"\r\n", limit=_CHUNK_LINE,
                                                  seconds=self._timeout) != b"\r\n":
                    pass  # a trailer field
                return
            async for piece in self._exactly(size):
                yield piece
            if await self._wire.read_until(b"\r\n", limit=2, seconds=self._timeout) != b"\r\n":
                raise httpx.RemoteProtocolError("the upstream's chunk overran its size")

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._checkin(self._wire, reusable=self._done and self._keep_alive)


class WireTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 transport with a pool of persistent connections per upstream.

    At most `max_connections` exchanges run at once (more wait up to the pool
    timeout); at most `max_idle` idle connections are kept, each for at most
    `keepalive_expiry` seconds, which must stay below the upstream's own
    keep-alive timeout (uvicorn: 5 s) so a reused connection is never half-closed.
    """

    def __init__(self, *, max_connections: int = 64, max_idle: int = 32,
                 keepalive_expiry: float = 4.0) -> None:
        if max_connections < 1 or max_idle < 0 or keepalive_expiry <= 0:
            raise ValueError("connection limits must be positive")
        self._max_connections, self._max_idle = max_connections, max_idle
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, int], list[_Wire]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol("the service transport speaks plain http only")
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
        key = (request.url.host, request.url.port or 80)
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle:
            wire = idle.pop()
            if not wire.closed and not wire.has_incoming and now - wire.idle_since < self._expiry:
                return wire
            wire.close()
        loop = asyncio.get_running_loop()
        try:
            async with _deadline(seconds, httpx.ConnectTimeout, "the upstream did not accept "
                                 "a connection in time"):
                _, wire = await loop.create_connection(_Wire, *key)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}") from exc
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


async def _exchange(pool: WireTransport, wire: _Wire, request: httpx.Request,
                    timeouts: dict[str, float | None]) -> httpx.Response:
    """Send one request on `wire` and return the response, its body still on the wire."""
    complete = await _send(wire, request, timeouts.get("write"))
    while True:  # skip interim (1xx) responses
        status, reason, headers, keep_alive = parse_response_head(
            await wire.read_until(b"\r\n\r\n", limit=MAX_HEAD, seconds=timeouts.get("read")))
        if status >= 200:
            break
    length, chunked = _framing(request.method, status, headers)
    body = _Response(pool, wire, length=length, chunked=chunked,
                     keep_alive=keep_alive and complete, timeout=timeouts.get("read"))
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


def _head(request: httpx.Request) -> bytes:
    """Return the request line and headers; raise LocalProtocolError on one that could split."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if _TOKEN.fullmatch(name) is None or _FORBIDDEN_IN_HEADERS.search(value):
            raise httpx.LocalProtocolError("a request header has an illegal name or value")
        lines.append(b"%s: %s" % (name, value))
    if _FORBIDDEN_IN_HEADERS.search(lines[0]):
        raise httpx.LocalProtocolError("the request target has an illegal character")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def parse_response_head(head: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    """Return (status, reason, headers, keep-alive) of a response head ending in CRLF CRLF.

    Raises httpx.RemoteProtocolError on a malformed status line or header field.
    """
    status_line, *fields = head[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise httpx.RemoteProtocolError("the upstream sent a malformed status line")
    headers: list[tuple[bytes, bytes]] = []
    for field in fields:
        name, sep, value = field.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None:
            raise httpx.RemoteProtocolError("the upstream sent a malformed header")
        headers.append((name, value.strip(b" \t")))
    connection = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
    keep_alive = match.group(1) == b"1" and b"close" not in connection
    return int(match.group(2)), match.group(3) or b"", headers, keep_alive


def _framing(method: str, status: int,
             headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """Return (Content-Length or None, chunked) for a response body (RFC 9112 section 6.3)."""
    if method == "HEAD" or status in (204, 304):
        return 0, False
    codings = b",".join(v for n, v in headers if n.lower() == b"transfer-encoding").lower()
    if codings:
        if codings.split(b",")[-1].strip() != b"chunked":
            raise httpx.RemoteProtocolError("the upstream sent an unsupported transfer coding")
        return None, True
    lengths = {v for n, v in headers if n.lower() == b"content-length"}
    if not lengths:
        return None, False
    if len(lengths) != 1 or not (value := lengths.pop()).isdigit() or len(value) > 18:
        raise httpx.RemoteProtocolError("the upstream sent an invalid Content-Length")
    return int(value), False
