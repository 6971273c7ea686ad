"""The CLI's two bulk exchanges on a plain socket: an upload PATCH and a replay GET.

httpx moves a body through h11 and httpcore: every piece sent is joined into a new
object before the socket sees it, and every piece received is copied two or three
times through h11's receive buffer, with a pure-Python state machine run per piece.
For a session file that is most of the client's CPU.  So here a PATCH body is read
from the file into one small reused buffer and written from it, and a replay is
received into one reused buffer and written from it.

Not sendfile(2): it spares this process one copy but moves a dearer one to the
gateway, whose receive then copies bytes no CPU cache has seen out of page-cache
pages; the read copy here leaves them warm for it.  The figures are in the README
(Performance).

Only the byte path is ours.  The request head is checked by the head codec the
services' transport uses (`sessions/common/_http1.py`), the response head is parsed
by its `parse_response_head` (held to h11's verdicts by
tests/common/test_wire_differential.py), and a body framed by anything but
Content-Length (chunked, or up to the close) is decoded by h11 itself; this
module's own receive path is held to h11 by tests/client/test_bulk.py.  The head
of a plain URL is written here (`plain_target`, held to httpx's by the same test
file); LucidClient has httpx write any other.  Failures are `_http1`'s transport
errors, named as httpx's (`ConnectError`, `ReadError`, `RemoteProtocolError`, the
timeouts), so LucidClient translates both families one way, and a replay to a
plain-http gateway never imports httpx.  Plain http only: an https gateway is
reached through httpx.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

from sessions.common._http1 import (
    _CONTROL,
    MAX_HEAD,
    ConnectError,
    ConnectTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
    WriteTimeout,
    _framing,
    parse_response_head,
    request_head,
)

__all__ = ["Exchange", "Reply", "Target", "plain_target"]

RECV_BUFFER = 1 << 20
"""Bytes of a replay collected before each write to the file (one buffer, reused)."""
SEND_BUFFER = 256 << 10
"""Bytes read from the file per write to the socket: small enough to stay in a CPU cache."""
PROGRESS_EVERY = 8 << 20
"""Bytes sent between two progress reports."""
MAX_ANSWER = 1 << 20
"""Largest body read into memory (a JSON answer or an error); a replay goes to a file."""

Sink = Callable[[memoryview], None]
"""Where received body pieces go, one reused buffer's view at a time."""

_PLAIN_HOST = re.compile(r"(?!.*xn--)[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
"""A lower-case host name (not IDNA: httpx would decode it) or an IP literal."""
_PLAIN_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*")
"""RFC 3986 pchars and slashes: what httpx sends exactly as it is given (no %-escapes)."""
_PLAIN_URL = re.compile(r'[!"$->@-~]*')
"""Printable ASCII, no query or fragment (urlsplit drops tabs and line ends httpx refuses)."""


@dataclass(frozen=True)
class Target:
    """Where a bulk request goes: the host to connect to, and the head to send it."""

    host: str
    port: int
    head: bytes


def plain_target(method: str, url: str, headers: Mapping[str, str]) -> Target | None:
    """Return the target of a request to `url` with `headers` (after `Host`), as httpx
    would send it; None unless both are plain, for httpx to build (`LucidClient`).

    Plain: `http://` a lower-case host name or IP literal, an optional port, a path of
    RFC 3986 path characters with no %-escape, query or fragment, ASCII header values.
    Raises LocalProtocolError on a header that could split the head.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or 80  # as the httpx-built target's (0 too)
    except ValueError:  # not a port number
        return None
    host = parts.netloc.removesuffix(f":{parts.port}")
    if (parts.scheme != "http" or _PLAIN_URL.fullmatch(url) is None
            or _PLAIN_HOST.fullmatch(host) is None
            or _PLAIN_PATH.fullmatch(parts.path) is None
            or {".", ".."} & set(parts.path.split("/"))  # httpx would remove them
            or not all(f"{k}{v}".isascii() for k, v in headers.items())):
        return None
    netloc = host if parts.port in (None, 80) else f"{host}:{parts.port}"
    fields = [(b"Host", netloc.encode("ascii"))]
    if method in ("POST", "PUT", "PATCH") and "content-length" not in map(str.lower, headers):
        fields.append((b"Content-Length", b"0"))  # an empty body, said as httpx says it
    fields += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
    return Target(host.strip("[]"), port, request_head(method, parts.path.encode("ascii") or b"/",
                                                       fields))


@dataclass(frozen=True)
class Reply:
    """A response head: status, reason phrase and fields as sent."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: str) -> str | None:
        """Return the first value of field `name` (any case), or None."""
        wanted = name.lower().encode("ascii")
        return next((v.decode("latin-1") for n, v in self.headers if n.lower() == wanted), None)


class Exchange:
    """One request and its answer on a connection of their own, closed afterwards.

    A fresh connection per exchange: a bulk request is long, so the connect is
    nothing beside it, and no idle connection can have been closed under us.
    """

    def __init__(self, method: str, head: bytes, sock: socket.socket) -> None:
        self._method = method
        self._head = head
        self._sock = sock
        self._reply_head = self._rest = b""  # the final head, and bytes received past it
        self._write_failure: OSError | None = None

    @classmethod
    def connect(cls, method: str, target: Target, *, connect_timeout: float,
                timeout: float | None) -> Exchange:
        """Return an exchange of a plain-http request (`target`) on a new connection."""
        try:
            sock = socket.create_connection((target.host, target.port), timeout=connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(method, target.head, sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- sending -----------------------------------------------------------------------------

    def send(self, fh: IO[bytes] | None = None, offset: int = 0, length: int = 0,
             progress: Callable[[int], None] | None = None) -> None:
        """Send the head, then file bytes [offset, offset+length), read into one reused buffer.

        `progress` gets the bytes of the body sent so far.  A write refused by the
        server (it answered early and closed) is kept and the answer read: that
        answer says why; with none, `read_reply` raises WriteError.
        """
        try:
            self._sock.sendall(self._head)
            if fh is None or length <= 0:
                return
            buf = memoryview(bytearray(min(SEND_BUFFER, length)))
            fd, sent, reported = fh.fileno(), 0, 0
            while sent < length:
                got = os.preadv(fd, [buf[:min(len(buf), length - sent)]], offset + sent)
                if got <= 0:
                    raise WriteError("the file got shorter while it was sent")
                self._sock.sendall(buf[:got])
                sent += got
                if progress is not None and (sent - reported >= PROGRESS_EVERY or sent == length):
                    progress(sent)
                    reported = sent
        except TimeoutError as exc:
            raise WriteTimeout(str(exc)) from exc
        except OSError as exc:
            self._write_failure = exc

    # -- receiving ---------------------------------------------------------------------------

    def _recv(self, size: int) -> bytes:
        try:
            return self._sock.recv(size)
        except TimeoutError as exc:
            raise ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise ReadError(str(exc)) from exc

    def read_reply(self) -> Reply:
        """Return the final response head (1xx heads are skipped, as httpx does)."""
        buf = b""
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                if len(buf) > MAX_HEAD:
                    raise RemoteProtocolError("the gateway sent an over-long head")
                piece = self._recv(65536)
                if not piece:
                    if self._write_failure is not None:
                        raise WriteError(str(self._write_failure)) from self._write_failure
                    raise RemoteProtocolError("Server disconnected without sending a response.")
                buf += piece
            status, reason, headers, _ = parse_response_head(buf[:end + 4])
            head, buf = buf[:end + 4], buf[end + 4:]
            if status >= 200 or status == 101:
                self._reply_head, self._rest = head, buf
                return Reply(status, reason, headers)

    def read_body(self, reply: Reply, sink: Sink) -> int:
        """Pass the body of `reply` to `sink` piece by piece; return its length.

        A body shorter than its Content-Length is RemoteProtocolError, as in
        httpx; any framing but Content-Length is decoded by h11.
        """
        length, _ = _framing(self._method, reply.status, reply.headers)
        if length is None:
            return self._h11_body(sink)
        rest, self._rest = self._rest[:length], b""
        if rest:
            sink(memoryview(rest))
        got = len(rest)
        if got == length:
            return got
        buf = memoryview(bytearray(min(RECV_BUFFER, length - got)))
        while got < length:
            want = min(len(buf), length - got)
            filled = 0
            while filled < want:
                try:
                    n = self._sock.recv_into(buf[filled:want])
                except TimeoutError as exc:
                    raise ReadTimeout(str(exc)) from exc
                except OSError as exc:
                    raise ReadError(str(exc)) from exc
                if n == 0:
                    if filled:
                        sink(buf[:filled])
                    raise RemoteProtocolError("peer closed connection without sending "
                                              f"complete message body (received "
                                              f"{got + filled} of {length} bytes)")
                filled += n
            sink(buf[:filled])
            got += filled
        return got

    def read_answer(self, reply: Reply) -> bytes:
        """Return the body of `reply` (a JSON answer or an error), at most MAX_ANSWER bytes."""
        body = bytearray()

        def keep(piece: memoryview) -> None:
            if len(body) + len(piece) > MAX_ANSWER:
                raise RemoteProtocolError("the gateway's answer is too long")
            body.extend(piece)

        self.read_body(reply, keep)
        return bytes(body)

    def _h11_body(self, sink: Sink) -> int:
        """Decode a body not framed by Content-Length with h11, from the head on."""
        import h11  # the gateway frames its bodies by Content-Length: rarely needed

        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        conn.send(h11.Request(method=self._method, target="/", headers=[("Host", "gateway")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(self._reply_head + self._rest)
        got = 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(self._recv(RECV_BUFFER))
                elif isinstance(event, h11.Data):
                    sink(memoryview(event.data))
                    got += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    if any(_CONTROL.search(value) for _, value in event.headers):
                        raise RemoteProtocolError("the gateway sent a malformed trailer")
                    return got
                elif isinstance(event, h11.ConnectionClosed):
                    raise RemoteProtocolError("the gateway closed the connection "
                                              "before the body's end")
        except h11.RemoteProtocolError as exc:
            raise RemoteProtocolError(str(exc)) from exc


def write_all(fd: int) -> Sink:
    """Return a sink that writes every piece to file descriptor `fd`."""
    def write(piece: memoryview) -> None:
        while piece:
            piece = piece[os.write(fd, piece):]
    return write
