"""The benchmark's bulk client: a recorder and a viewer that cost the shared CPU little.

In production the recorder that uploads and the viewer that replays run on other
machines; here they share the bench's two cores with the services, so whatever
CPU they burn is taken from the system under test (restic and borg have no such
client).  So the two bulk steps use plain sockets: an upload body is read into one
reused buffer and sent from it, as curl sends a file (sendfile(2) would be cheaper
for the client but costs the receiving gateway more: the page-cache pages it hands
over are in no CPU cache; README "The services' CPU on the CLI's path, profiled"),
and a replay is read into one reused buffer and hashed there.  The client's CPU is
measured and reported.  Everything else (create, status, finalize, verify) goes
through httpx.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sessions.common._http1 import MAX_HEAD, RemoteProtocolError, parse_response_head

MiB = 1 << 20
SEND_PIECE = 256 << 10  # an upload body goes out through one buffer of this size


class ClientError(RuntimeError):
    """The gateway refused a request, or its answer was not HTTP we understand."""


def _connect(base: str, timeout: float) -> tuple[socket.socket, str]:
    """Return a connected socket to the base URL's host and the URL's path prefix."""
    url = urlsplit(base)
    if url.scheme != "http" or url.hostname is None:
        raise ValueError(f"the bench client speaks plain http only, not {base!r}")
    sock = socket.create_connection((url.hostname, url.port or 80), timeout=timeout)
    return sock, url.path.rstrip("/")


def _request_head(method: str, target: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Return (status, lower-cased headers, body bytes read past the head)."""
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        piece = sock.recv(65536)
        if not piece or len(buf) > MAX_HEAD:
            raise ClientError("the gateway closed the connection or sent an over-long head")
        buf += piece
    try:  # the services' own client parses heads the same way
        status, _, fields, _ = parse_response_head(buf[:end + 4])
    except RemoteProtocolError as exc:
        raise ClientError(str(exc)) from exc
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in fields}
    return status, headers, buf[end + 4:]


def _content_length(headers: dict[str, str]) -> int:
    value = headers.get("content-length", "")
    if not value.isdigit():
        raise ClientError("the gateway's answer has no Content-Length")
    return int(value)


def _read_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    length = _content_length(headers)
    body = bytearray(rest)
    while len(body) < length:
        piece = sock.recv(length - len(body))
        if not piece:
            raise ClientError("the gateway's answer ended early")
        body += piece
    return bytes(body[:length])


def patch_file(base: str, token: str, session_id: str, path: Path, *, offset: int,
               length: int, timeout: float) -> Any:
    """PATCH file bytes [offset, offset+length) at Upload-Offset `offset`; return the JSON answer.

    The body is read into one reused SEND_PIECE buffer and sent from it (as curl does),
    Content-Length set, no Upload-Checksum.  Raises ClientError with the gateway's error
    body unless it answers 200.
    """
    sock, prefix = _connect(base, timeout)
    with sock, open(path, "rb", buffering=0) as f:
        host = urlsplit(base).netloc
        sock.sendall(_request_head("PATCH", f"{prefix}/sessions/{session_id}/upload", host, {
            "Authorization": f"Bearer {token}", "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream", "Content-Length": str(length)}))
        f.seek(offset)
        buffer = bytearray(SEND_PIECE)
        view, left = memoryview(buffer), length
        while left:
            got = f.readinto(view[:min(left, SEND_PIECE)])
            if not got:
                raise ClientError(f"sent {length - left} of {length} bytes: the file changed")
            sock.sendall(view[:got])
            left -= got
        status, headers, rest = _read_head(sock)
        body = _read_body(sock, headers, rest)
    if status != 200:
        raise ClientError(f"PATCH at offset {offset}: HTTP {status}: {body[:500]!r}")
    return json.loads(body)


def replay_sha256(base: str, token: str, session_id: str, *, timeout: float) -> tuple[int, str]:
    """GET the session's replay; return (bytes received, hex SHA-256 of them).

    Raises ClientError unless the gateway answers 200 with a body of its Content-Length.
    """
    sock, prefix = _connect(base, timeout)
    digest = hashlib.sha256()
    with sock:
        host = urlsplit(base).netloc
        sock.sendall(_request_head("GET", f"{prefix}/sessions/{session_id}/replay", host,
                                   {"Authorization": f"Bearer {token}"}))
        status, headers, rest = _read_head(sock)
        if status != 200:
            raise ClientError(f"replay: HTTP {status}: {_read_body(sock, headers, rest)[:500]!r}")
        length = _content_length(headers)
        digest.update(rest)
        got = len(rest)
        buf = memoryview(bytearray(MiB))
        while got < length:
            n = sock.recv_into(buf, min(MiB, length - got))
            if not n:
                break  # cut short: the caller sees got < length
            digest.update(buf[:n])
            got += n
    return got, digest.hexdigest()
