"""Plain helpers of the end-to-end suite: test data, raw HTTP, upload and replay calls.

Nothing here starts a process; `conftest.py` does that.  Everything talks to the
services over real sockets: `httpx` for well-formed requests, `RawRequest` for
the ones a well-behaved client cannot send (a body cut short, a request held open).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from sessions.common.checksums import Checksum, hasher

MIB = 1 << 20
CHUNK = MIB  # LUCID_CHUNK_SIZE of the e2e cluster: the minimum, so tests cross boundaries cheaply
MAX_UPLOAD = 64 * MIB  # LUCID_MAX_UPLOAD_BYTES of the e2e cluster
NODE_NAME = "lucid-e2e"
UPLOAD_TYPE = "application/offset+octet-stream"
ID_RE = re.compile(r"\b[0-7][0-9A-HJKMNP-TV-Z]{25}\b")


# -- test data ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def session_bytes(size: int, seed: int) -> bytes:
    """Return `size` deterministic bytes that look like a desktop recording.

    Mostly "screen frames" (rows of a few flat colours with a little noise: compressible),
    interleaved with incompressible runs (video regions, already-compressed images).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    palette = [bytes(rng.randbytes(3)) for _ in range(16)]
    out = bytearray()
    frame = 0
    while len(out) < size:
        if rng.random() < 0.65:
            width = rng.choice((640, 1024, 1280))
            rows = rng.randint(8, 48)
            out += b"FRAME" + struct.pack(">IHH", frame, width, rows)
            for _ in range(rows):
                row = bytearray(rng.choice(palette) * width)
                at = rng.randrange(0, len(row) - 64)
                row[at:at + 48] = rng.randbytes(48)  # a cursor, a line of text
                out += row
            frame += 1
        else:
            out += rng.randbytes(rng.randint(1, 96 * 1024))
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_header(data: bytes, algorithm: str = "sha256") -> str:
    """Return an `Upload-Checksum` value for data."""
    digest = hasher(algorithm)
    digest.update(data)
    return Checksum(algorithm, digest.digest()).header


def chunks_for(sizes: list[int]) -> int:
    """Return the chunk count after requests of these sizes: each request's tail is a chunk."""
    return sum(math.ceil(n / CHUNK) for n in sizes)


# -- the public API through httpx ------------------------------------------------------------

def create_session(api: httpx.Client, labels: dict[str, str] | None = None,
                   retention_days: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"labels": labels or {}}
    if retention_days is not None:
        body["retention_days"] = retention_days
    r = api.post("/sessions", json=body)
    assert r.status_code == 201, (r.status_code, r.text)
    session: dict[str, Any] = r.json()
    assert ID_RE.fullmatch(session["id"]), session
    return session


def patch(api: httpx.Client, sid: str, offset: int, body: bytes, *,
          checksum: str | None = None, content_type: str = UPLOAD_TYPE,
          extra: dict[str, str] | None = None) -> httpx.Response:
    headers = {"Upload-Offset": str(offset), "Content-Type": content_type, **(extra or {})}
    if checksum is not None:
        headers["Upload-Checksum"] = checksum
    return api.patch(f"/sessions/{sid}/upload", content=body, headers=headers)


def head_offset(api: httpx.Client, sid: str) -> int:
    r = api.head(f"/sessions/{sid}/upload")
    assert r.status_code == 200, r.status_code
    value = r.headers.get("upload-offset")
    assert value is not None and value.isdigit(), dict(r.headers)
    return int(value)


def upload(api: httpx.Client, sid: str, data: bytes, *, start: int = 0,
           piece: int = 4 * MIB) -> None:
    """Send data[start:] in requests of `piece` bytes, checking each answer."""
    offset = start
    while offset < len(data):
        body = data[offset:offset + piece]
        r = patch(api, sid, offset, body)
        assert r.status_code == 200, (r.status_code, r.text)
        offset += len(body)
        assert r.json()["offset"] == offset, r.json()
        assert r.headers["upload-offset"] == str(offset)


def finalize(api: httpx.Client, sid: str) -> dict[str, Any]:
    r = api.post(f"/sessions/{sid}/finalize")
    assert r.status_code == 200, (r.status_code, r.text)
    session: dict[str, Any] = r.json()
    assert session["state"] == "completed", session
    assert re.fullmatch(r"[0-9a-f]{64}", session["root_hash"] or ""), session
    return session


def recorded_session(api: httpx.Client, data: bytes, *, labels: dict[str, str] | None = None,
                     piece: int = 4 * MIB, final: bool = True) -> dict[str, Any]:
    """Create a session, upload data in `piece`-byte requests and (by default) finalize it."""
    session = create_session(api, labels)
    upload(api, session["id"], data, piece=piece)
    return finalize(api, session["id"]) if final else api.get(f"/sessions/{session['id']}").json()


def replay(api: httpx.Client, sid: str, byte_range: str | None = None) -> httpx.Response:
    headers = {} if byte_range is None else {"Range": byte_range}
    return api.get(f"/sessions/{sid}/replay", headers=headers)


def committed_prefix_ok(api: httpx.Client, sid: str, data: bytes, offset: int) -> bool:
    """Return whether the first `offset` committed bytes replay as data[:offset]."""
    if offset == 0:
        return True
    r = replay(api, sid, f"bytes=0-{offset - 1}")
    assert r.status_code == 206, (r.status_code, r.text[:300])
    return r.content == data[:offset]


def resume(api: httpx.Client, sid: str, data: bytes, *, timeout: float = 20.0) -> list[int]:
    """Finish uploading data the way a recorder does after a failure; return offsets seen.

    Asks HEAD where to continue and sends the rest.  While the server still holds
    the failed request's writer slot it answers 409 upload_in_progress, and a tail
    committed late answers 409 offset_mismatch; both mean "ask again shortly".
    """
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        offset = head_offset(api, sid)
        seen.append(offset)
        assert 0 <= offset <= len(data)
        if offset == len(data):
            return seen
        r = patch(api, sid, offset, data[offset:])
        if r.status_code == 200:
            assert r.json()["offset"] == len(data), r.json()
            seen.append(len(data))
            return seen
        assert r.status_code == 409, (r.status_code, r.text)
        assert r.json()["error"] in ("upload_in_progress", "offset_mismatch"), r.text
        assert time.monotonic() < deadline, f"still {r.json()} after {timeout}s: writer stuck?"
        time.sleep(0.1)


def _probe_writer(api: httpx.Client, sid: str) -> tuple[bool, int]:
    """Return (another writer holds the session, committed offset) without changing anything.

    An empty PATCH at the committed offset commits nothing when the session is free
    and answers 409 upload_in_progress while another request holds the writer slot.
    """
    offset = head_offset(api, sid)
    r = patch(api, sid, offset, b"")
    if r.status_code == 200:
        assert r.json()["offset"] == offset, r.json()
        return False, offset
    assert r.status_code == 409, (r.status_code, r.text)
    code = r.json()["error"]
    assert code in ("upload_in_progress", "offset_mismatch"), r.text  # mismatch: it moved on
    return code == "upload_in_progress", offset


def wait_writer_held(api: httpx.Client, sid: str, *, timeout: float = 15.0) -> None:
    """Wait until an open upload request has reached the processor and holds the session."""
    wait_for(lambda: _probe_writer(api, sid)[0], timeout=timeout,
             what="the open request to hold the writer slot")


def wait_writer_free(api: httpx.Client, sid: str, *, timeout: float = 15.0) -> int:
    """Wait until no request holds the session; return the (now stable) committed offset."""
    state: dict[str, int] = {}

    def free() -> bool:
        held, state["offset"] = _probe_writer(api, sid)
        return not held

    wait_for(free, timeout=timeout, what="the failed request to release the writer slot")
    return head_offset(api, sid)


def wait_for(predicate: Any, *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll predicate until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_error(r: httpx.Response | RawResponse, status: int, code: str | tuple[str, ...],
                 ) -> dict[str, Any]:
    """Check r is a clean JSON error body {"error": code, "detail": text}; return the body."""
    text = r.text
    assert r.status_code == status, (r.status_code, text[:500])
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), ctype
    body = json.loads(text)
    assert isinstance(body, dict), body
    codes = (code,) if isinstance(code, str) else code
    assert body.get("error") in codes, body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


# -- raw HTTP/1.1 over a socket ----------------------------------------------------------------

@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes
    complete: bool = True  # False if the connection ended before the declared length

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass
class RawRequest:
    """One HTTP/1.1 request written by hand, so a test can stop mid-body or hold it open."""

    port: int
    method: str
    path: str
    headers: dict[str, str]
    timeout: float = 30.0
    sent: int = 0
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 "Connection: close", *(f"{k}: {v}" for k, v in self.headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def abort(self) -> None:
        """Close abruptly: SO_LINGER 0 makes the close send RST, as a crashed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def half_close(self) -> None:
        """Stop sending (FIN) as a client whose body ended early would, then close."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        finally:
            self.sock.close()

    def response(self) -> RawResponse:
        """Read the whole response (the request said Connection: close)."""
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            piece = self.sock.recv(65536)
            if not piece:
                raise ConnectionError(f"connection closed before a response: {bytes(buf)!r}")
            buf += piece
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = bytearray(rest)
        try:
            while piece := self.sock.recv(65536):
                body += piece
        except (ConnectionResetError, TimeoutError):
            pass
        self.sock.close()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoded, complete = _dechunk(bytes(body))
            return RawResponse(status, headers, decoded, complete)
        declared = headers.get("content-length")
        complete = declared is None or len(body) == int(declared)
        return RawResponse(status, headers, bytes(body), complete)

    def close(self) -> None:
        self.sock.close()


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return bytes(out), False
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out), True
        out += body[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


def raw(port: int, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes = b"") -> RawResponse:
    """Send one complete request exactly as written (no path normalisation) and read it back."""
    hdrs = dict(headers or {})
    if body or method in ("POST", "PATCH", "PUT"):
        hdrs.setdefault("Content-Length", str(len(body)))
    req = RawRequest(port, method, path, hdrs)
    if body:
        req.send(body)
    return req.response()
