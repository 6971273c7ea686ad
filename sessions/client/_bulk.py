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

Only the byte path is ours.  The request head is built and checked by the service
transport's `_head` (from an `httpx.Request`, the one LucidClient builds), the
response head is parsed by its `parse_response_head` (held to h11's verdicts by
tests/common/test_wire_differential.py), and a body framed by anything but
Content-Length (chunked, or up to the close) is decoded by h11 itself; this
module's own receive path is held to h11 by tests/client/test_bulk.py.  Failures
are httpx's exceptions (`ConnectError`, `ReadError`, `RemoteProtocolError`, the
timeouts), so LucidClient keeps translating them in one place.  Plain http only:
an https gateway is reached through httpx.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import httpx

from sessions.common._http1 import _CONTROL, MAX_HEAD, _framing, _head, parse_response_head

__all__ = ["Exchange", "Reply"]

RECV_BUFFER = 1 << 20
"""Bytes of a replay collected before each write to the file (one buffer, reused)."""
SEND_BUFFER = 256 << 10
"""Bytes read from the file per write to the socket: small enough to stay in a CPU cache."""
PROGRESS_EVERY = 8 << 20
"""Bytes sent between two progress reports."""
MAX_ANSWER = 1 << 20
"""Largest body read into memory (a JSON answer or an error); a replay goes to a file."""

Sink = Callable[[memoryview], None]
"""Refused in a trailer's value, as the service transport refuses it (h11 does not)."""


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
    def connect(cls, request: httpx.Request, *, connect_timeout: float,
                timeout: float | None) -> Exchange:
        """Return an exchange of `request` (its head checked) on a new connection to its host."""
        url = request.url
        if url.scheme != "http":
            raise ValueError(f"a bulk exchange is plain http, not {url.scheme}")
        head = _head(request)
        try:
            sock = socket.create_connection((url.host, url.port or 80), timeout=connect_timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(request.method, head, sock)

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
        answer says why; with none, `read_reply` raises httpx.WriteError.
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
                    raise httpx.WriteError("the file got shorter while it was sent")
                self._sock.sendall(buf[:got])
                sent += got
                if progress is not None and (sent - reported >= PROGRESS_EVERY or sent == length):
                    progress(sent)
                    reported = sent
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            self._write_failure = exc

    # -- receiving ---------------------------------------------------------------------------

    def _recv(self, size: int) -> bytes:
        try:
            return self._sock.recv(size)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from exc

    def read_reply(self) -> Reply:
        """Return the final response head (1xx heads are skipped, as httpx does)."""
        buf = b""
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                if len(buf) > MAX_HEAD:
                    raise httpx.RemoteProtocolError("the gateway sent an over-long head")
                piece = self._recv(65536)
                if not piece:
                    if self._write_failure is not None:
                        raise httpx.WriteError(str(self._write_failure)) from self._write_failure
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.")
                buf += piece
            status, reason, headers, _ = parse_response_head(buf[:end + 4])
            head, buf = buf[:end + 4], buf[end + 4:]
            if status >= 200 or status == 101:
                self._reply_head, self._rest = head, buf
                return Reply(status, reason, headers)

    def read_body(self, reply: Reply, sink: Sink) -> int:
        """Pass the body of `reply` to `sink` piece by piece; return its length.

        A body shorter than its Content-Length is httpx.RemoteProtocolError, as in
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
                    raise httpx.ReadTimeout(str(exc)) from exc
                except OSError as exc:
                    raise httpx.ReadError(str(exc)) from exc
                if n == 0:
                    if filled:
                        sink(buf[:filled])
                    raise httpx.RemoteProtocolError("peer closed connection without sending "
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
                raise httpx.RemoteProtocolError("the gateway's answer is too long")
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
                        raise httpx.RemoteProtocolError("the gateway sent a malformed trailer")
                    return got
                elif isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError("the gateway closed the connection "
                                                    "before the body's end")
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc


def write_all(fd: int) -> Sink:
    """Return a sink that writes every piece to file descriptor `fd`."""
    def write(piece: memoryview) -> None:
        while piece:
            piece = piece[os.write(fd, piece):]
    return write
