"""HTTP/1.1 message heads, written and read as h11 does: no I/O, no event loop.

The request head our clients send and the response heads they read, with the framing
of the body that follows (RFC 9112).  Both the services' transport (`_wire.py`) and the
CLI's bulk path (sessions/client/_bulk.py) use it; the CLI, having no event loop,
imports this alone.  tests/common/test_wire_differential.py holds the reading to h11's
verdicts.

Errors are this module's own transport family, named and ranked as httpx's
(`TransportError` > `ProtocolError` > `RemoteProtocolError` ...; the test
tests/common/test_http1.py holds the two families alike), so the CLI's bulk path
fails as httpx would without importing it; the services' transport, an httpx
transport, raises httpx's own in their place (`_wire.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the services' transport passes one: the CLI never imports httpx here
    import httpx

MAX_HEAD = 64 << 10
"""Longest response head (status line and headers) accepted."""

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([1-9][0-9]{2})(?: ([\t \x21-\x7e\x80-\xff]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
"""A field value without its surrounding whitespace: VCHAR and obs-text (RFC 9110 5.5)."""
_DIGITS = re.compile(rb"[0-9]{1,20}")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class TransportError(Exception):
    """An exchange failed on its way (httpx.TransportError's counterpart)."""


class TimeoutException(TransportError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class NetworkError(TransportError):
    pass


class ConnectError(NetworkError):
    pass


class ReadError(NetworkError):
    pass


class WriteError(NetworkError):
    pass


class ProtocolError(TransportError):
    pass


class LocalProtocolError(ProtocolError):
    """A request head we were about to send could be split or misread."""


class RemoteProtocolError(ProtocolError):
    """The peer's message breaks HTTP/1.1."""


def request_head(method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Return the request line and headers; raise LocalProtocolError on one that could split."""
    lines = [b"%s %s HTTP/1.1" % (method.encode("ascii"), target)]
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value.strip(b" \t")) is None:
            raise LocalProtocolError("a request header has an illegal name or value")
        lines.append(b"%s: %s" % (name, value))
    if _CONTROL.search(lines[0]):
        raise LocalProtocolError("the request target has an illegal character")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _head(request: httpx.Request) -> bytes:
    """Return the head of an httpx request (`request_head`)."""
    return request_head(request.method, request.url.raw_path, request.headers.raw)


def parse_response_head(head: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    """Return (status, reason, headers, keep-alive) of a response head ending in CRLF CRLF.

    Raises RemoteProtocolError on a malformed status line or header field.
    """
    status_line, *lines = head[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise RemoteProtocolError("the upstream sent a malformed status line")
    headers = _checked_framing(_fields(lines))
    connection = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
    keep_alive = match.group(1) != b"0" and b"close" not in connection
    return int(match.group(2)), match.group(3) or b"", headers, keep_alive


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Return the (name, value) pairs of a head's or a trailer's field lines.

    A line starting with whitespace continues the previous one (obs-fold, joined
    with a space as RFC 9112 section 5.2 asks of a recipient).  Raises
    RemoteProtocolError on a name that is not a token or a value with a
    control character.
    """
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not unfolded:
                raise RemoteProtocolError("the upstream sent a malformed header")
            unfolded[-1] += b" " + line.lstrip(b" \t")
        else:
            unfolded.append(line)
    headers: list[tuple[bytes, bytes]] = []
    for field in unfolded:
        name, sep, value = field.partition(b":")
        value = value.strip(b" \t")
        if not sep or _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            raise RemoteProtocolError("the upstream sent a malformed header")
        headers.append((name, value))
    return headers


def _checked_framing(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Return a field section with one Content-Length and a lower-case coding, as h11 keeps them.

    Raises RemoteProtocolError on any transfer coding but a lone `chunked`, on
    Content-Length together with Transfer-Encoding (RFC 9112 section 6.3: a
    message that could be framed two ways), and on conflicting or invalid lengths.
    """
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    if codings and lengths:
        raise RemoteProtocolError("the upstream sent both Content-Length and "
                                  "Transfer-Encoding")
    if codings and (len(codings) != 1 or codings[0].lower() != b"chunked"):
        raise RemoteProtocolError("the upstream sent an unsupported transfer coding")
    if not lengths:
        return [(n, v.lower() if codings and n.lower() == b"transfer-encoding" else v)
                for n, v in headers]
    values = {v.strip(b" \t") for field in lengths for v in field.split(b",")}
    if len(values) != 1 or _DIGITS.fullmatch(length := values.pop()) is None:
        raise RemoteProtocolError("the upstream sent an invalid Content-Length")
    first = next(i for i, (n, _) in enumerate(headers) if n.lower() == b"content-length")
    return [(n, length if i == first else v) for i, (n, v) in enumerate(headers)
            if i == first or n.lower() != b"content-length"]


def _framing(method: str, status: int,
             headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """Return (Content-Length or None, chunked) for a response body (RFC 9112 section 6.3).

    `headers` went through _checked_framing: one length at most, or `chunked` alone.
    """
    if method == "HEAD" or status in (204, 304) or status < 200:
        return 0, False
    for name, value in headers:
        if name.lower() == b"transfer-encoding":
            return None, True
        if name.lower() == b"content-length":
            return int(value), False
    return None, False
