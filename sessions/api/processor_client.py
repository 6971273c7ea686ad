"""The gateway's one HTTP client for the chunk processor; httpx stops at this boundary.

One long-lived `httpx.AsyncClient` (connection reuse) talks to the processor's
`/internal/v1` with the service token.  Upstream error bodies are re-raised
unchanged as `ServiceError`s; transport failures become `UpstreamUnavailable`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import httpx

from sessions.api.actor import actor_headers
from sessions.common.errors import NotFound, NotReady, UpstreamUnavailable, error_from_body
from sessions.common.httpclient import service_client
from sessions.common.settings import Transport
from sessions.common.tls import log_tls_failure
from sessions.contract import operations as ops
from sessions.contract.models import (
    AuditPage,
    ConsistencyProof,
    InclusionProof,
    KeyRotation,
    NewToken,
    NodeInfo,
    OwnedCreateSession,
    PrefixCheck,
    PrefixCheckResult,
    RotateSigningIn,
    Session,
    SessionPage,
    StoredToken,
    StoredTokenList,
    UploadResult,
    UploadStatus,
    VerifyReport,
)

log = logging.getLogger("lucid.api.processor")

JSON_TIMEOUT = httpx.Timeout(300.0, connect=5.0, pool=30.0)
STREAM_TIMEOUT = httpx.Timeout(None, connect=5.0, pool=30.0)
_ERROR_HEADERS = ("upload-offset", "retry-after")
T = TypeVar("T")


@contextmanager
def _translated() -> Iterator[None]:
    """Turn httpx transport failures into UpstreamUnavailable (the one boundary, trait 8)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable("the chunk processor did not answer in time") from exc
    except httpx.TransportError as exc:
        log_tls_failure(log, exc, "the chunk processor")
        raise UpstreamUnavailable("the chunk processor is not answering") from exc


async def _raise_for_error(resp: httpx.Response) -> None:
    """Raise the ServiceError an upstream 4xx/5xx body carries; return on success."""
    if resp.status_code < 400:
        return
    with _translated():
        raw = await resp.aread()
    if resp.status_code == 401:
        # Not the client's fault: this gateway's service token is wrong.
        log.error("the chunk processor rejected the gateway's service token")
        raise UpstreamUnavailable("the chunk processor rejected this gateway's credentials")
    reply = ops.decode_error(resp.status_code, raw)
    err = error_from_body(reply.status, reply.body())
    for name in _ERROR_HEADERS:
        if name in resp.headers:
            err.headers[name.title()] = resp.headers[name]
    raise err


def _read(op: ops.Operation[T], resp: httpx.Response) -> T:
    """Return the operation's answer read from a 2xx response."""
    try:
        return op.read(resp.status_code, resp.content)
    except ops.MalformedAnswer as exc:
        raise UpstreamUnavailable("the chunk processor sent a malformed answer") from exc


class ProcessorClient:
    """Calls the processor's `/internal/v1`; one method per public operation
    (`sessions.contract.operations` describes each request and answer)."""

    def __init__(self, base_url: str, token: str, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 kind: Transport = Transport.WIRE, tls: ssl.SSLContext | None = None,
                 uds: str | None = None) -> None:
        self._ready_url = f"{base_url}/ready"
        self._http = service_client(f"{base_url}/internal/v1", token, timeout=JSON_TIMEOUT,
                                    transport=transport, kind=kind, max_connections=256,
                                    tls=tls, uds=uds)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, op: ops.Operation[T]) -> T:
        """Return the answer of one operation, or raise its error."""
        with _translated():
            resp = await self._http.request(
                op.method, op.path, params=list(op.params), json=op.json,
                headers={**op.headers, **actor_headers()},
                timeout=STREAM_TIMEOUT if op.long else JSON_TIMEOUT)
        await _raise_for_error(resp)
        return _read(op, resp)

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, spec: OwnedCreateSession) -> Session:
        return await self.call(ops.create_session(spec))

    async def list_sessions(self, params: list[tuple[str, str]]) -> SessionPage:
        return await self.call(ops.list_sessions(params))

    async def get_session(self, session_id: str) -> Session:
        return await self.call(ops.get_session(session_id))

    async def set_upload_length(self, session_id: str, length: int) -> Session:
        return await self.call(ops.set_upload_length(session_id, length))

    async def finalize(self, session_id: str) -> Session:
        return await self.call(ops.finalize(session_id))

    async def delete_session(self, session_id: str) -> None:
        await self.call(ops.delete_session(session_id))

    async def set_hold(self, session_id: str, hold: bool) -> Session:
        return await self.call(ops.set_hold(session_id, hold))

    async def manifest(self, session_id: str) -> bytes:
        return await self.call(ops.manifest(session_id))

    async def checkpoint(self, session_id: str, size: int | None) -> bytes:
        return await self.call(ops.checkpoint(session_id, size))

    async def inclusion_proof(self, session_id: str, index: int,
                              size: int | None) -> InclusionProof:
        return await self.call(ops.inclusion_proof(session_id, index, size))

    async def consistency_proof(self, session_id: str, first: int,
                                second: int | None) -> ConsistencyProof:
        return await self.call(ops.consistency_proof(session_id, first, second))

    async def verify(self, session_id: str, sample: float) -> VerifyReport:
        return await self.call(ops.verify(session_id, sample))

    async def node(self) -> NodeInfo:
        return await self.call(ops.node())

    async def rotate_keys(self) -> KeyRotation:
        return await self.call(ops.rotate_keys())

    # -- API tokens -------------------------------------------------------------------------

    async def create_token(self, token: NewToken) -> StoredToken:
        return await self.call(ops.store_token(token))

    async def find_token(self, token_id: str) -> StoredToken | None:
        """Return the stored token of that id, None if there is none."""
        try:
            return await self.call(ops.stored_token(token_id))
        except NotFound:
            return None

    async def list_tokens(self) -> StoredTokenList:
        return await self.call(ops.stored_tokens())

    async def revoke_token(self, token_id: str) -> StoredToken:
        return await self.call(ops.revoke_stored_token(token_id))

    # -- keys and the audit log --------------------------------------------------------------

    async def rotate_signing_key(self, body: RotateSigningIn) -> NodeInfo:
        return await self.call(ops.rotate_signing_key(body))

    async def audit(self, *, start: int, limit: int, session_id: str | None) -> AuditPage:
        return await self.call(ops.audit_page(start=start, limit=limit, session_id=session_id))

    async def audit_checkpoint(self) -> bytes | None:
        """Return the audit log's signed head, None before its first entry."""
        return await self.call(ops.audit_checkpoint())

    # -- uploads ----------------------------------------------------------------------------

    async def upload_status(self, session_id: str) -> UploadStatus:
        return await self.call(ops.upload_status(session_id))

    async def upload(self, session_id: str, body: AsyncIterable[bytes],
                     headers: Mapping[str, str]) -> tuple[UploadResult, str | None]:
        """Stream body to the processor; return its answer and its Upload-Offset header.

        An exception raised by `body` (too large, client gone) aborts the upstream
        request mid-body and propagates unchanged: the processor discards a truncated body.
        """
        op = ops.upload(session_id, headers)
        request = self._http.build_request(op.method, op.path, content=body,
                                           headers={**op.headers, **actor_headers()},
                                           timeout=STREAM_TIMEOUT)
        with _translated():
            resp = await self._http.send(request)
        await _raise_for_error(resp)
        return _read(op, resp), resp.headers.get("upload-offset")

    async def prefix_check(self, session_id: str, body: PrefixCheck) -> PrefixCheckResult:
        return await self.call(ops.prefix_check(session_id, body.offset, body.digest()))

    # -- streamed reads ---------------------------------------------------------------------

    async def _open(self, op: ops.Operation[T]) -> httpx.Response:
        """Return an open streaming response with a 2xx status; the caller must close it."""
        request = self._http.build_request(op.method, op.path, timeout=STREAM_TIMEOUT,
                                           headers={**op.headers, **actor_headers()})
        with _translated():
            resp = await self._http.send(request, stream=True)
        try:
            await _raise_for_error(resp)
        except BaseException:
            await resp.aclose()
            raise
        return resp

    async def open_replay(self, session_id: str, byte_range: str | None) -> httpx.Response:
        return await self._open(ops.replay(session_id, byte_range))

    async def open_chunk(self, session_id: str, index: int) -> httpx.Response:
        return await self._open(ops.sealed_chunk(session_id, index))

    @staticmethod
    async def relay(resp: httpx.Response, *, count: Callable[[int], None]) -> AsyncIterator[bytes]:
        """Yield an open response's body as read; raise UpstreamUnavailable if it breaks.

        A body shorter than its Content-Length also raises, so the caller can cut
        the client's connection instead of ending a short response cleanly.
        """
        chunked = "transfer-encoding" in resp.headers  # its length, if any, is not the body's
        declared = None if chunked else resp.headers.get("content-length")
        sent = 0
        with _translated():
            async for piece in resp.aiter_raw():  # pieces as the socket gave them: no copies
                sent += len(piece)
                count(len(piece))
                yield piece
        if declared is not None and declared.isdigit() and sent != int(declared):
            raise UpstreamUnavailable("the chunk processor's body ended early")

    @staticmethod
    async def close_stream(resp: httpx.Response) -> None:
        """Close an open response, ignoring a transport that already broke."""
        try:
            await resp.aclose()
        except httpx.HTTPError:
            log.debug("closing a broken upstream stream failed")

    # -- readiness --------------------------------------------------------------------------

    async def ready(self) -> None:
        """Return if the processor's /ready answers 200; raise NotReady otherwise."""
        try:
            resp = await self._http.get(self._ready_url, timeout=httpx.Timeout(5.0))
        except httpx.HTTPError as exc:
            raise NotReady("the chunk processor is not answering") from exc
        if resp.status_code != 200:
            raise NotReady("the chunk processor is not ready")
