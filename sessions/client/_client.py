"""A small synchronous client of the public `/v1` API, and the transfers the CLI runs with it.

`LucidClient` is the one place where transport errors (httpx's, or the bulk path's
own family of the same names) become `ClientError`s.  The upload loop
(`upload_file`) resumes after connection errors, 5xx answers and offset
mismatches; `download_replay` writes to `FILE.part` and renames only a complete body.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import mmap
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TypeVar

from sessions.client import _bulk
from sessions.common import _http1, checksums
from sessions.common.checksums import Checksum
from sessions.common.files import fsync_dir
from sessions.common.states import SessionState
from sessions.contract import operations as ops

# httpx and the models load where they are used: a replay to a plain-http gateway needs
# neither (nor pydantic), and starts much sooner without them.
if TYPE_CHECKING:
    import httpx

    from sessions.contract.models import (
        AuditPage,
        CreatedToken,
        InclusionProof,
        KeyRotation,
        NodeInfo,
        Session,
        SessionPage,
        TokenList,
        UploadResult,
        UploadStatus,
    )

MIB = 1024 * 1024
PIECE = MIB
HASH_WINDOW = 16 * MIB
CHECKSUM = "crc32c"
"""The uploads' `Upload-Checksum` algorithm unless told: catches damage on the way at a
fraction of SHA-256's CPU, on both ends (sessions/common/checksums.py says why it is enough)."""
UPLOAD_TYPE = "application/offset+octet-stream"
API = "/v1"
_RESUMABLE = (SessionState.RECORDING, SessionState.FINALIZING, SessionState.COMPLETED)
T = TypeVar("T")


class ClientError(Exception):
    """A failed call: a stable `code` (the server's, or a client-side one) and a detail."""

    def __init__(self, code: str, detail: str, *, status: int | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.body = body or {}

    @classmethod
    def of(cls, reply: ops.ErrorReply, reason: str = "") -> ClientError:
        """Return the error a decoded error answer names (`http_error` if it names none)."""
        if not reply.recognised:
            return cls("http_error", f"HTTP {reply.status} {reason}".rstrip(), status=reply.status)
        return cls(reply.code, reply.detail, status=reply.status, body=reply.body())

    @property
    def retryable(self) -> bool:
        """Return whether trying again later may succeed (network, 5xx, a busy session)."""
        return (self.status is None or self.status >= 500
                or self.code in ("upload_in_progress", "lease_lost", "checksum_mismatch"))


def _error_from(resp: httpx.Response) -> ClientError:
    return ClientError.of(ops.decode_error(resp.status_code, resp.read()), resp.reason_phrase)


class PinMismatch(ssl.SSLError):
    """The gateway's certificate does not carry the pinned public key."""


def parse_pin(value: str) -> bytes:
    """Return the 32-byte SHA-256 of a public-key pin: `sha256//BASE64` (curl's
    --pinnedpubkey), bare base64, or 64 hex digits (colons allowed)."""
    text = value.strip().removeprefix("sha256//")
    hexed = text.replace(":", "")
    if len(hexed) == 64:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(hexed)
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    raise ValueError("a pin is the SHA-256 of the certificate's public key: sha256//BASE64 "
                     "(as curl --pinnedpubkey) or 64 hex digits")


def public_key_pin(cert_der: bytes) -> bytes:
    """Return the SHA-256 of a DER certificate's SubjectPublicKeyInfo (the pinned value)."""
    from cryptography import x509  # only a pinned gateway needs it: not on every command
    from cryptography.hazmat.primitives import serialization

    spki = x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


class _PinnedContext(ssl.SSLContext):
    """A client TLS context that accepts exactly the certificates holding one public key.

    The check runs right after the handshake, inside wrap_socket, so no request (and no
    bearer token) is sent to a server that fails it."""

    pin = b""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True)
        if der is None or not hmac.compare_digest(public_key_pin(der), self.pin):
            sock.close()
            raise PinMismatch("the gateway's certificate does not carry the pinned public key")
        return sock


def tls_verify(cacert: str | None, pin: str | None) -> ssl.SSLContext | bool:
    """Return httpx's `verify`: the CA file's context, a public-key pin's, or True (the
    system's CAs, or SSL_CERT_FILE).  With both, the chain and the pin must both hold."""
    if pin is None:
        return ssl.create_default_context(cafile=cacert) if cacert else True
    ctx = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.pin = parse_pin(pin)
    if cacert:
        ctx.load_verify_locations(cafile=cacert)
    else:  # the pin is the trust: a self-signed certificate, reached by any name
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_failure(exc: BaseException) -> str | None:
    """Return why TLS verification failed, if that is what ended a connection."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PinMismatch):
            return str(seen.args[0])
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verification failed ({seen.verify_message})"
        seen = seen.__cause__ or seen.__context__
    return None


class LucidClient:
    """Calls the gateway at `url` with a bearer token; raises ClientError on any failure.

    Upload bodies and replays of a plain-http gateway move on a socket of their own
    (`sessions/client/_bulk.py`: one reused buffer out, one in); everything else,
    and every exchange with an https gateway or through an injected `transport`, goes
    through httpx.
    """

    def __init__(self, url: str, token: str | None, *,
                 transport: httpx.BaseTransport | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._https = self.url.lower().startswith("https://")
        self._bulk = transport is None and not self._https
        self._transport = transport
        self._verify = verify

    @functools.cached_property
    def _http(self) -> httpx.Client:
        """The httpx client, built at its first use: a replay to a plain-http gateway never
        needs it (nor httpx: ~30 ms of imports, its transport loads a default TLS context)."""
        import httpx

        return httpx.Client(base_url=self.url, headers=self._headers, transport=self._transport,
                            verify=self._verify if self._https else False,
                            timeout=httpx.Timeout(300.0, connect=10.0))

    def close(self) -> None:
        if "_http" in self.__dict__:
            self._http.close()

    def __enter__(self) -> LucidClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _failure(self, exc: Exception, *, connect: bool, timeout: bool) -> ClientError:
        """Return the ClientError of a transport failure, saying what to do about it."""
        if connect:
            if (why := _tls_failure(exc)) is not None:
                return ClientError("tls_untrusted", f"{self.url}: {why}; trust it with --cacert "
                                   "or --pin-sha256")
            return ClientError("connection_failed", f"cannot connect to {self.url} (is the "
                               "gateway running? try `lucid-sessions up`)")
        if timeout:
            return ClientError("timeout", f"{self.url} did not answer in time")
        return ClientError("connection_failed", f"the connection to {self.url} failed "
                           f"({type(exc).__name__})")

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turn the bulk path's transport failures (`_http1`'s family) into ClientErrors."""
        try:
            yield
        except _http1.TransportError as exc:
            raise self._failure(exc, connect=isinstance(exc, _http1.ConnectError),
                                timeout=isinstance(exc, _http1.TimeoutException)) from exc

    @contextmanager
    def _translated_httpx(self) -> Iterator[None]:
        """Turn httpx's transport failures into the same ClientErrors as `_translated`."""
        import httpx

        try:
            yield
        except httpx.TransportError as exc:
            raise self._failure(exc, connect=isinstance(exc, httpx.ConnectError),
                                timeout=isinstance(exc, httpx.TimeoutException)) from exc

    def _send(self, op: ops.Operation[T], **kwargs: Any) -> httpx.Response:
        """Return the response to one operation; raise ClientError for transport or 4xx/5xx."""
        import httpx

        timeout = httpx.Timeout(None, connect=10.0) if op.long else httpx.USE_CLIENT_DEFAULT
        with self._translated_httpx():
            resp = self._http.request(op.method, API + op.path, params=list(op.params),
                                      json=op.json, headers=dict(op.headers), timeout=timeout,
                                      **kwargs)
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp

    def call(self, op: ops.Operation[T], **kwargs: Any) -> T:
        """Return the answer of one operation (`sessions.contract.operations`), read into its
        model; raise ClientError on any failure (`bad_response`: not the model's shape)."""
        resp = self._send(op, **kwargs)
        try:
            return op.read(resp.status_code, resp.content)
        except ops.MalformedAnswer as exc:
            raise ClientError("bad_response", f"the gateway sent a malformed answer ({exc})",
                              status=resp.status_code) from exc

    # -- operations -------------------------------------------------------------------------

    def create_session(self, labels: dict[str, str], retention_days: int | None) -> Session:
        from sessions.contract.models import CreateSession

        # Not validated here: the gateway's 422 is the one answer a bad value gets.
        spec = CreateSession.model_construct(labels=labels, retention_days=retention_days,
                                             upload_length=None)
        return self.call(ops.create_session(spec))

    def list_sessions(self, *, state: str | None, labels: list[str], limit: int,
                      cursor: str | None) -> SessionPage:
        return self.call(ops.list_sessions(ops.session_query(
            state=state, labels=labels, limit=limit, cursor=cursor)))

    def get_session(self, session_id: str) -> Session:
        return self.call(ops.get_session(session_id))

    def create_token(self, name: str, role: str, expires_in: int | None) -> CreatedToken:
        from sessions.contract.models import CreateToken

        body = CreateToken.model_construct(name=name, role=role, expires_in=expires_in)
        return self.call(ops.create_token(body))

    def list_tokens(self) -> TokenList:
        return self.call(ops.list_tokens())

    def revoke_token(self, token_id: str) -> None:
        self.call(ops.revoke_token(token_id))

    def delete_session(self, session_id: str) -> None:
        self.call(ops.delete_session(session_id))

    def finalize(self, session_id: str) -> Session:
        return self.call(ops.finalize(session_id))

    def upload_status(self, session_id: str) -> UploadStatus:
        return self.call(ops.upload_status(session_id))

    def prefix_check(self, session_id: str, offset: int, digest: bytes) -> bool:
        """Return whether the session's first `offset` committed bytes have SHA-256 `digest`."""
        return self.call(ops.prefix_check(session_id, offset, digest)).match

    def manifest(self, session_id: str) -> bytes:
        return self.call(ops.manifest(session_id))

    def checkpoint(self, session_id: str, size: int | None = None) -> bytes:
        return self.call(ops.checkpoint(session_id, size))

    def inclusion_proof(self, session_id: str, index: int, size: int | None) -> InclusionProof:
        return self.call(ops.inclusion_proof(session_id, index, size))

    def sealed_chunk(self, session_id: str, index: int) -> bytes | None:
        """Return chunk `index` as stored, or None if the node reports it missing."""
        try:
            return self.call(ops.sealed_chunk(session_id, index))
        except ClientError as exc:
            if exc.code == "chunk_not_found":
                return None
            raise

    def node(self) -> NodeInfo:
        return self.call(ops.node())

    def rotate_signing_key(self, compromised_after: str | None) -> NodeInfo:
        from sessions.contract.models import RotateSigningIn

        return self.call(ops.rotate_signing_key(
            RotateSigningIn.model_construct(compromised_after=compromised_after)))

    def audit_page(self, *, start: int, limit: int, session_id: str | None) -> AuditPage:
        return self.call(ops.audit_page(start=start, limit=limit, session_id=session_id or None))

    def audit_checkpoint(self) -> bytes | None:
        """Return the audit log's signed head, or None while the log is empty (204)."""
        return self.call(ops.audit_checkpoint())

    def rotate_keys(self) -> KeyRotation:
        return self.call(ops.rotate_keys())

    def _exchange(self, op: ops.Operation[T]) -> _bulk.Exchange:
        """Return a bulk exchange of `op` (no read timeout: op is long), its head built.

        The head of a plain URL is written by `_bulk.plain_target`; httpx writes any other
        (an upper-case host, a %-escape ...), so both send what httpx would."""
        url, headers = self.url + API + op.path, {**self._headers, **op.headers}
        with self._translated():
            target = None if op.params else _bulk.plain_target(op.method, url, headers)
            if target is None:
                target = _httpx_target(op.method, url, op.params, headers)
            return _bulk.Exchange.connect(op.method, target, connect_timeout=10.0, timeout=None)

    def patch(self, session_id: str, fh: IO[bytes], offset: int, length: int,
              progress: Progress, checksum: Checksum | None = None, *,
              algorithm: str = CHECKSUM) -> UploadResult:
        """Send file bytes [offset, offset+length) at Upload-Offset `offset`; return the answer.

        `checksum` is their `Upload-Checksum` (hashed here with `algorithm` when not
        given).  To a plain-http gateway the body goes out through one small reused
        buffer on a socket of its own; otherwise through httpx from a read-only mapping
        of the file.  Either way the file is read from disk once and memory stays at the
        pages in flight.
        """
        if os.fstat(fh.fileno()).st_size < offset + length:
            raise ClientError("file_changed", "the file got shorter while uploading")
        if checksum is None:
            checksum = _digest(fh, offset, length, algorithm)
        op = ops.upload(session_id, {
            "Upload-Offset": str(offset), "Content-Type": UPLOAD_TYPE,
            "Content-Length": str(length), "Accept-Encoding": "identity",
            "Upload-Checksum": checksum.header})
        if not self._bulk:
            return self._patch_httpx(op, fh, offset, length, progress)
        with self._exchange(op) as exchange, self._translated():
            exchange.send(fh, offset, length, lambda sent: progress.update(offset + sent))
            reply = exchange.read_reply()
            body = exchange.read_answer(reply)
        if reply.status >= 400:
            raise ClientError.of(ops.decode_error(reply.status, body),
                                 reply.reason.decode("latin-1"))
        try:
            return op.read(reply.status, body)
        except ops.MalformedAnswer as exc:
            raise ClientError("bad_response", f"the gateway sent a malformed answer ({exc})",
                              status=reply.status) from exc

    def _patch_httpx(self, op: ops.Operation[UploadResult], fh: IO[bytes], offset: int,
                     length: int, progress: Progress) -> UploadResult:
        """Send the body through httpx, from a read-only mapping of the file."""
        with _mapped(fh, offset, length) as view:
            def body() -> Iterator[bytes]:
                for at in range(0, length, PIECE):
                    piece = view[at:at + PIECE]
                    yield piece  # type: ignore[misc]  # a view: httpx sends any buffer
                    progress.update(offset + at + len(piece))

            return self.call(op, content=body())

    def replay_into(self, session_id: str, sink: _bulk.Sink, *, byte_range: str | None,
                    progress: Progress) -> tuple[int, int | None]:
        """Pass the replay to `sink` piece by piece; return (bytes, Content-Length or None)."""
        op = ops.replay(session_id, byte_range or None)
        written = 0

        def write(piece: memoryview) -> None:
            nonlocal written
            sink(piece)
            written += len(piece)
            progress.update(written)

        if not self._bulk:
            return self._replay_httpx(op, write, progress)
        with self._exchange(op) as exchange:
            with self._translated():
                exchange.send()
                reply = exchange.read_reply()
                if reply.status >= 400:
                    body = exchange.read_answer(reply)
                    raise ClientError.of(ops.decode_error(reply.status, body),
                                         reply.reason.decode("latin-1"))
            declared = reply.header("content-length")
            expected = int(declared) if declared and declared.isdigit() else None
            progress.total = expected
            try:
                exchange.read_body(reply, write)
            except _http1.TransportError as exc:
                raise _truncated(written, expected) from exc
        return written, expected

    def _replay_httpx(self, op: ops.Operation[None], write: _bulk.Sink,
                      progress: Progress) -> tuple[int, int | None]:
        """Stream the replay to `write` through httpx; return (bytes, Content-Length or None)."""
        import httpx

        from sessions.common.httpclient import raise_read_size  # loads the services' settings

        raise_read_size()  # replay arrives in MiB pieces: 64 KiB reads cost a parse each
        with self._translated_httpx(), self._http.stream(
                op.method, API + op.path, headers=dict(op.headers),
                timeout=httpx.Timeout(None, connect=10.0)) as resp:
            if resp.status_code >= 400:
                raise _error_from(resp)
            declared = resp.headers.get("content-length")
            expected = int(declared) if declared and declared.isdigit() else None
            progress.total = expected
            written = 0
            try:
                for piece in resp.iter_raw():  # as read, up to 1 MiB; a chunk_size would copy
                    write(memoryview(piece))
                    written += len(piece)
            except httpx.TransportError as exc:
                raise _truncated(written, expected) from exc
        return written, expected


def _httpx_target(method: str, url: str, params: ops.Params,
                  headers: dict[str, str]) -> _bulk.Target:
    """Return the bulk target of a request whose URL or headers are not plain, built by httpx."""
    import httpx

    request = httpx.Request(method, url, params=list(params), headers=headers)
    if request.url.scheme != "http":
        raise ValueError(f"a bulk exchange is plain http, not {request.url.scheme}")
    return _bulk.Target(request.url.host, request.url.port or 80, _http1._head(request))


def _truncated(written: int, expected: int | None) -> ClientError:
    """Return the error of a replay the node cut short."""
    total = "?" if expected is None else f"{expected:,}"
    return ClientError("truncated", f"the node cut the replay after {written:,} of {total} "
                       "bytes (a chunk may have failed verification: try `lucid-sessions "
                       "verify`)")


@contextmanager
def _mapped(fh: IO[bytes], offset: int, length: int) -> Iterator[memoryview]:
    """Yield a read-only view of file bytes [offset, offset+length) mapped from the page cache.

    ClientError file_changed if the file is now shorter (it is checked before mapping:
    one shortened while mapped would end the process with SIGBUS).
    """
    if os.fstat(fh.fileno()).st_size < offset + length:
        raise ClientError("file_changed", "the file got shorter while uploading")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fh.fileno(), offset + length - start, access=mmap.ACCESS_READ,
                   offset=start) as mapping:
        mapping.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mapping)[offset - start:]
        try:
            yield view
        finally:
            view.release()


RAMP: Final = {"crc32c": 64}
"""How much larger each upload request may be than the one before, by checksum (else 4).

The next request's digest is computed while this one is sent.  CRC-32C digests a
cached file many times faster than the bytes leave, so after one chunk the request
goes to its full size (256 MiB: two requests instead of four); a SHA-256 digest of
that size would hold the upload up, so the slower digests grow fourfold.  The
figures are in the README ("This build's changes, measured")."""


def file_digest(path: Path, offset: int, length: int, algorithm: str) -> Checksum:
    """Return the `Upload-Checksum` of file bytes [offset, offset+length), hashed from a mapping.

    Mapped a window at a time, so the pages this process maps stay few whatever the
    request's size (the hashers let go of the GIL while they hash each window).
    """
    with path.open("rb") as fh:
        return _digest(fh, offset, length, algorithm)


def _digest(fh: IO[bytes], offset: int, length: int, algorithm: str) -> Checksum:
    digest = checksums.hasher(algorithm)
    for at in range(offset, offset + length, HASH_WINDOW):
        with _mapped(fh, at, min(HASH_WINDOW, offset + length - at)) as view:
            digest.update(view)
    return Checksum(algorithm, digest.digest())


def _file_range(fh: IO[bytes], offset: int, length: int) -> Iterator[bytes]:
    fh.seek(offset)
    left = length
    while left > 0:
        piece = fh.read(min(PIECE, left))
        if not piece:
            raise ClientError("file_changed", "the file got shorter while uploading")
        left -= len(piece)
        yield piece


class Progress:
    """A one-line text progress bar on stderr: bytes, percent, MB/s."""

    _line_open = False
    """Whether some bar's line is on stderr without its newline yet (one stderr, one flag)."""

    def __init__(self, total: int | None, *, enabled: bool, start: int = 0) -> None:
        self.total = total
        self.enabled = enabled
        self._start_bytes = start
        self._start = time.monotonic()
        self._last = 0.0
        self._done = start

    def update(self, done: int, *, force: bool = False) -> None:
        self._done = done
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        rate = (done - self._start_bytes) / max(now - self._start, 1e-6) / 1e6
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            line = (f"[{bar:<30}] {frac * 100:5.1f}%  {done / 1e6:,.1f}/"
                    f"{self.total / 1e6:,.1f} MB  {rate:,.1f} MB/s")
        else:
            line = f"{done / 1e6:,.1f} MB  {rate:,.1f} MB/s"
        sys.stdout.flush()  # what was printed before the bar stays before it
        sys.stderr.write("\r" + line + "   ")
        sys.stderr.flush()
        Progress._line_open = True

    def finish(self) -> None:
        """Draw the final figures and end the bar's line (once; later calls do nothing)."""
        if self.enabled:
            self.update(self._done, force=True)
            self.enabled = False
        Progress.end_line()

    @staticmethod
    def end_line() -> None:
        """End a bar's open line, so whatever is written next starts a line of its own."""
        if Progress._line_open:
            Progress._line_open = False
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- resumable uploads --------------------------------------------------------------------


@dataclass(frozen=True)
class FileKey:
    """What identifies an upload for resuming: the same file, unchanged, to the same node."""

    path: str
    size: int
    mtime_ns: int
    url: str

    @classmethod
    def of(cls, path: Path, url: str) -> FileKey:
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns, url)


class ResumeStore:
    """`uploads.json`: which session each unfinished file upload went to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        items = data.get("uploads") if isinstance(data, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's lock: two CLIs uploading at once never lose each other's entries."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _save(self, items: list[dict[str, Any]]) -> None:
        """Replace the file atomically, through a temp file of this writer's own."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(json.dumps({"uploads": items}, indent=1))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def lookup(self, key: FileKey) -> str | None:
        for item in self._load():
            if {k: item.get(k) for k in ("path", "size", "mtime_ns", "url")} == key.__dict__:
                session_id = item.get("session_id")
                return session_id if isinstance(session_id, str) else None
        return None

    def remember(self, key: FileKey, session_id: str) -> None:
        with self._locked():
            items = [i for i in self._load() if i.get("path") != key.path]
            self._save([*items, {**key.__dict__, "session_id": session_id}])

    def forget(self, key: FileKey) -> None:
        with self._locked():
            items = self._load()
            kept = [i for i in items if i.get("path") != key.path]
            if len(kept) != len(items):
                self._save(kept)


def default_state_file() -> Path:
    """Return `<LUCID_DATA_DIR or ./lucid-data>/client/uploads.json`, else a per-user cache."""
    data_dir = os.environ.get("LUCID_DATA_DIR")
    if data_dir or Path("lucid-data").is_dir():
        return Path(data_dir or "lucid-data") / "client" / "uploads.json"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lucid-sessions" / "uploads.json"


@dataclass
class UploadPlan:
    """What `upload_file` needs besides the client and the file."""

    labels: dict[str, str]
    retention_days: int | None
    request_bytes: int
    finalize: bool
    session_id: str | None = None
    retries: int = 8
    checksum: str = CHECKSUM
    """The `Upload-Checksum` algorithm of every request (sessions/common/checksums.py)."""


def _resume_target(client: LucidClient, store: ResumeStore, key: FileKey,
                   say: Callable[[str], None]) -> str | None:
    """Return the recorded session of an interrupted upload of this file, if still usable."""
    session_id = store.lookup(key)
    if session_id is None:
        return None
    try:
        status: UploadStatus | None = client.upload_status(session_id)
    except ClientError as exc:
        if exc.status not in (404, 409):
            raise
        status = None  # gone
    if status is not None and status.state in _RESUMABLE:
        say(f"resuming session {session_id} of {key.path} at byte {status.offset}")
        return session_id
    store.forget(key)
    return None


def upload_file(client: LucidClient, path: Path, plan: UploadPlan, *, store: ResumeStore,
                progress_enabled: bool, say: Callable[[str], None],
                sleep: Callable[[float], None] = time.sleep) -> str:
    """Upload a file into a session (new, recorded for resume, or given); return its id."""
    key = FileKey.of(path, client.url)
    session_id = plan.session_id or _resume_target(client, store, key, say)
    if session_id is None:
        session_id = client.create_session(plan.labels, plan.retention_days).id
        say(f"created session {session_id}")
    if plan.session_id is None:
        store.remember(key, session_id)
    status = client.upload_status(session_id)
    if status.state != SessionState.RECORDING and status.offset != key.size:
        raise ClientError("invalid_state", f"session {session_id} is {status.state.value} at "
                          f"byte {status.offset} but the file has {key.size} bytes")
    _check_prefix(client, session_id, path, key.size, status.offset, say)
    if status.state == SessionState.RECORDING:
        _send(client, session_id, path, key.size, status, plan, progress_enabled, sleep)
    else:
        say(f"session {session_id} already holds all {key.size:,} bytes of {path}")
    if plan.finalize:
        client.finalize(session_id)
        store.forget(key)
    return session_id


def _check_prefix(client: LucidClient, session_id: str, path: Path, size: int, offset: int,
                  say: Callable[[str], None]) -> None:
    """Refuse (ClientError prefix_mismatch) unless the session's committed bytes open the file.

    The size alone proves nothing: another file of the same size, or one that differs
    early on, would otherwise be resumed into (or taken as uploaded).  The node hashes
    its committed plaintext as it reads it back; nothing is checked when it holds none.
    """
    if offset == 0:
        return
    if offset > size:
        raise ClientError("prefix_mismatch", f"session {session_id} holds {offset:,} bytes but "
                          f"{path} has only {size:,}: it is not this file's upload")
    say(f"checking that session {session_id} holds the first {offset:,} bytes of {path}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for piece in _file_range(fh, 0, offset):
            digest.update(piece)
    if not client.prefix_check(session_id, offset, digest.digest()):
        raise ClientError("prefix_mismatch", f"the first {offset:,} bytes session {session_id} "
                          f"holds are not the first {offset:,} bytes of {path}: refusing to "
                          "continue another file's upload")


def _send(client: LucidClient, session_id: str, path: Path, size: int, status: UploadStatus,
          plan: UploadPlan, progress_enabled: bool, sleep: Callable[[float], None]) -> None:
    """PATCH the file from the committed offset to the end, resuming after failures.

    After a connection error, a 5xx or a busy session it backs off and asks the
    offset again; after 409 offset_mismatch it continues from the offset the body
    names.  More than `plan.retries` failures in a row give up.

    Requests start at one chunk and grow by `RAMP[plan.checksum]` up to
    `plan.request_bytes`: a request's checksum must be known before its first byte is
    sent, so only the first (small) one is hashed while nothing is on the wire, and each
    next one is hashed on a thread while the one before is sent.  Each request costs the
    services CPU of its own (about 20 ms over the three: a lease, a signed checkpoint,
    an audit entry, a commit), so the ramp is as short as the digest allows.
    """
    chunk = status.chunk_size
    most = max(chunk, plan.request_bytes // chunk * chunk)
    growth = RAMP.get(plan.checksum, 4)
    step = chunk
    offset: int | None = status.offset
    progress = Progress(size, enabled=progress_enabled, start=offset or 0)
    failures = 0
    # The next request's checksum is hashed on a thread while this one is sent, so
    # hashing is off the path the bytes take (it maps the pages the request sends).
    ahead: tuple[int, int, Future[Checksum]] | None = None
    with path.open("rb") as fh, ThreadPoolExecutor(1, thread_name_prefix="lucid-hash") as hasher:
        while offset is None or offset < size:
            try:
                if offset is None:
                    offset = client.upload_status(session_id).offset
                    continue
                length = min(step, size - offset)
                digest = ahead[2].result() if ahead and ahead[:2] == (offset, length) else None
                following = offset + length
                ahead = None
                step = min(most, growth * step)
                if following < size:
                    span = min(step, size - following)
                    ahead = (following, span, hasher.submit(file_digest, path, following, span,
                                                            plan.checksum))
                answer = client.patch(session_id, fh, offset, length, progress, digest,
                                      algorithm=plan.checksum)
                offset, failures = answer.offset, 0
            except ClientError as exc:
                failures += 1
                if failures > plan.retries or not (exc.retryable or exc.code == "offset_mismatch"):
                    progress.finish()
                    raise
                offset = _offset_in(exc)
                if offset is None:
                    sleep(min(2.0 ** (failures - 1), 30.0))
            progress.update(offset or 0)
    progress.finish()
    if offset != size:
        raise ClientError("offset_mismatch", f"the session holds {offset} bytes, but the file "
                          f"has {size}")


def _offset_in(exc: ClientError) -> int | None:
    """Return the committed offset an offset_mismatch names, or None if it must be asked."""
    value = exc.body.get("offset") if exc.code == "offset_mismatch" else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def download_replay(client: LucidClient, session_id: str, out: Path, *,
                    byte_range: str | None, progress_enabled: bool) -> int:
    """Stream a replay into `out` via `out.part`; return the bytes written.

    Only a body received in full (as many bytes as Content-Length) and fsync'd is
    renamed into place, and the rename is fsync'd too; on any failure the part file
    is removed and the error re-raised.  The body is written back to disk while it
    arrives (`_Writeback`), so the closing fsync waits for its last stretch only.
    """
    part = out.with_name(out.name + ".part")
    progress = Progress(None, enabled=progress_enabled)
    try:
        with part.open("wb") as fh:
            written, expected = client.replay_into(session_id, _Writeback(fh.fileno()),
                                                   byte_range=byte_range, progress=progress)
            if expected is not None and written != expected:
                raise ClientError("truncated", f"received {written} of {expected} bytes")
            os.fsync(fh.fileno())
        os.replace(part, out)
        _fsync_dir(out.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        progress.finish()
    return written


def _fsync_dir(directory: Path) -> None:
    """Make the rename of the replay into `directory` durable.

    A directory this user may write but not read cannot be opened to sync: it is left
    as it is, since the file in it is complete and already fsync'd.
    """
    with contextlib.suppress(PermissionError):
        fsync_dir(directory)


WRITEBACK_EVERY = 8 * MIB
"""Bytes of a replay written between two starts of their writeback (see `_Writeback`)."""
SYNC_FILE_RANGE_WRITE = 2
"""<linux/fs.h>: start writing the range's dirty pages back, wait for none."""


class _Writeback:
    """A sink that writes a file from its start and has the kernel start writing each
    WRITEBACK_EVERY bytes back to disk as soon as they are written.

    The fsync that makes a replay durable then waits for the last stretch only: the
    disk writes while the rest still arrives, instead of after it.  A hint only
    (Linux's sync_file_range, which waits for nothing and whose failure is ignored):
    durability stays the closing fsync's.  Where there is no sync_file_range the
    bytes are only written.
    """

    def __init__(self, fd: int) -> None:
        self._fd, self._start, self._end = fd, 0, 0
        self._write = _bulk.write_all(fd)
        self._kick = _sync_file_range()

    def __call__(self, piece: memoryview) -> None:
        self._write(piece)
        self._end += len(piece)
        if self._kick is not None and self._end - self._start >= WRITEBACK_EVERY:
            self._kick(self._fd, self._start, self._end - self._start, SYNC_FILE_RANGE_WRITE)
            self._start = self._end


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Return libc's sync_file_range(fd, offset, nbytes, flags), or None where it has none."""
    if sys.platform != "linux":
        return None
    import ctypes  # only a replay needs it: not on every command

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except AttributeError:
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function
