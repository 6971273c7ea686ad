"""The processor's client for session storage: one pooled HTTP connection set, typed calls.

Each call is an `Operation` of `sessions/contract/storage.py` and each answer is
parsed into that module's models, so storage's documented shapes are the ones
read here.  httpx errors are translated here, once: storage's own error bodies come
back (through `decode_error`) as the same `ServiceError`, a dead storage or an
answer that does not fit the contract becomes `UpstreamUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from sessions.common.checksums import Checksum
from sessions.common.errors import (
    InvalidState,
    NotFound,
    ServiceError,
    UpstreamUnavailable,
    error_from_body,
)
from sessions.common.evidence import AuditAppend, AuditEntryModel, AuditPage
from sessions.common.httpclient import service_client, service_transport
from sessions.common.settings import Transport
from sessions.common.states import SessionState
from sessions.common.tls import log_tls_failure
from sessions.common.tokens import NewToken, StoredToken, StoredTokenList
from sessions.contract import storage as ops
from sessions.contract.models import SessionPage
from sessions.contract.operations import MalformedAnswer, Operation, decode_error
from sessions.contract.storage import (
    CommitOut,
    CreateSessionIn,
    HoldIn,
    LeaseOut,
    RewrapIn,
    StoredSession,
    WrappedKeyModel,
)
from sessions.core import AuditEntry, ChunkEntry, WrappedKey

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CONNECTIONS = 64
"""Connections to storage open at once, at most (its pool)."""
CHUNK_PAGE = 10_000


class ChunkOverflow(Exception):
    """Storage sent more bytes for a chunk than the largest sealed chunk can have."""

    def __init__(self, index: int) -> None:
        super().__init__(f"chunk {index} is longer than any sealed chunk")
        self.index = index


RESUME_DELAYS = (0.05, 0.25, 1.0, 2.0, 4.0)
"""Seconds waited before each resume of a chunk read that broke off: bounded, and long
enough in all (7.3 s) for a storage process to be restarted."""


class _BrokeOff(Exception):
    """A chunk's answer ended before its last byte, or a resumed read found no answer."""


class _ChunkBytes:
    """A chunk's sealed bytes as they arrive in a caller's buffer, across resumed reads."""

    def __init__(self, index: int, buf: memoryview) -> None:
        self.index, self.buf = index, buf
        self.n = 0  # bytes received so far
        self.began = False  # an answer arrived: a failure from now on is resumed
        self.size: int | None = None  # the sealed length storage announced

    def announced(self, size: int | None) -> None:
        """Note an answer's announced length: ChunkOverflow past the buffer, and every
        answer must announce the first one's (UpstreamUnavailable otherwise)."""
        if size is not None and size > len(self.buf):
            raise ChunkOverflow(self.index)
        if self.size is not None and size != self.size:
            raise UpstreamUnavailable("session storage changed a chunk's length mid-read")
        self.began, self.size = True, size

    def add(self, piece: bytes) -> None:
        end = self.n + len(piece)
        if end > len(self.buf):
            raise ChunkOverflow(self.index)
        self.buf[self.n:end] = piece
        self.n = end

    def view(self) -> memoryview:
        return self.buf[:self.n]


async def _whole(view: memoryview) -> AsyncIterator[memoryview]:
    yield view


ChunkRow = ChunkEntry
"""One committed chunk as storage's metadata records it: the six facts a manifest entry holds
(parsed from the contract's `ChunkModel` by `ChunkModel.to_entry`, the one place)."""

SessionRow = StoredSession
"""A session record as storage returns it; its wrapped key never leaves the processor
(`.public()` drops it)."""


class StorageClient:
    """Typed calls to storage's `/internal/v1` API over one reused connection pool."""

    def __init__(self, base_url: str, token: str, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 kind: Transport = Transport.WIRE, tls: ssl.SSLContext | None = None,
                 uds: str | None = None) -> None:
        if transport is None:
            transport = service_transport(kind, max_connections=MAX_CONNECTIONS, tls=tls, uds=uds)
        self._transport = transport
        self._http = service_client(base_url, token, transport=transport,
                                    max_connections=MAX_CONNECTIONS,
                                    timeout=httpx.Timeout(60.0, connect=5.0))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, op: Operation[Any], content: Any = None) -> httpx.Response:
        """Send op (with `content` as its body if given); return the response, its body read;
        raise the ServiceError of an error."""
        try:
            resp = await self._send(op, content)
            try:
                await resp.aread()
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            log_tls_failure(log, exc, "session storage")
            raise UpstreamUnavailable("session storage is not answering") from exc
        if resp.status_code >= 400:
            raise _error(resp.status_code, resp.content)
        return resp

    async def _send(self, op: Operation[Any], content: Any = None) -> httpx.Response:
        """Send op (with `content` as its body if given) straight to the transport; return
        the response with its body still to be read (raises httpx's transport errors).

        Storage's answers use none of what httpx's client layer adds around a transport
        (the auth and redirect flows, cookie extraction), which took about a tenth of the
        processor's Python time on a replay, one chunk GET at a time.  The request is the
        client's own (`build_request`: base URL, token, timeouts).
        """
        request = self._http.build_request(op.method, op.path, params=list(op.params) or None,
                                           headers=op.headers or None, json=op.json,
                                           content=content)
        return await self._transport.handle_async_request(request)

    async def _answer(self, op: Operation[T]) -> T:
        """Send op; return its answer as op reads it (UpstreamUnavailable if it does not fit)."""
        resp = await self._call(op)
        try:
            return op.read(resp.status_code, resp.content)
        except MalformedAnswer as exc:
            log.error("session storage answered outside the contract: %s", exc)
            raise UpstreamUnavailable(f"session storage sent a malformed answer ({exc})") from None

    async def ready(self) -> None:
        op = ops.ready()
        try:
            resp = await self._http.request(op.method, op.path)
        except httpx.HTTPError as exc:
            log_tls_failure(log, exc, "session storage")
            raise UpstreamUnavailable("session storage is not answering") from exc
        if resp.status_code != 200:
            raise UpstreamUnavailable("session storage is not ready")

    async def create_session(self, body: CreateSessionIn) -> SessionRow:
        return await self._answer(ops.create_session(body))

    # -- API tokens (the gateway's relay) ------------------------------------------------------

    async def create_token(self, body: NewToken) -> StoredToken:
        return await self._answer(ops.create_token(body))

    async def list_tokens(self) -> StoredTokenList:
        return await self._answer(ops.list_tokens())

    async def get_token(self, token_id: str) -> StoredToken:
        return await self._answer(ops.get_token(token_id))

    async def revoke_token(self, token_id: str) -> StoredToken:
        return await self._answer(ops.revoke_token(token_id))

    # -- session records -----------------------------------------------------------------------

    async def get_session(self, sid: str) -> SessionRow:
        return await self._answer(ops.get_session(sid))

    async def list_sessions(self, params: Sequence[tuple[str, str]]) -> SessionPage:
        """Return one page of sessions as clients see them (no wrapped keys)."""
        page = await self._answer(ops.list_sessions(params))
        return SessionPage(items=[s.public() for s in page.items], next_cursor=page.next_cursor)

    async def all_sessions(self) -> AsyncIterator[SessionRow]:
        """Yield every session record, wrapped keys included, following storage's cursors."""
        cursor: str | None = None
        while True:
            params = [("limit", "500")] + ([("cursor", cursor)] if cursor else [])
            page = await self._answer(ops.list_sessions(params))
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if not cursor:
                return

    async def replace_wrapped_key(self, sid: str, *, expected_key_id: str,
                                  wrapped: WrappedKey) -> SessionRow:
        body = RewrapIn(expected_key_id=expected_key_id, wrapped_key=WrappedKeyModel.of(wrapped))
        return await self._answer(ops.replace_wrapped_key(sid, body))

    async def set_upload_length(self, sid: str, length: int, *,
                                lease_token: int | None = None) -> SessionRow:
        return await self._answer(ops.set_upload_length(sid, length, lease_token))

    async def transition(self, sid: str, *, to: SessionState,
                         allowed_from: tuple[SessionState, ...],
                         lease_token: int | None = None) -> SessionRow:
        return await self._answer(ops.transition(sid, to, allowed_from, lease_token))

    async def put_chunk(self, sid: str, index: int, data: bytes | memoryview,
                        leaf_hash: bytes, *, checksum: Checksum | None = None,
                        lease_token: int | None = None) -> None:
        """Stage a sealed chunk; a memoryview (of a pooled buffer) is sent without a copy.

        With a `checksum` (of `data`), storage checks the bytes by it, not by the leaf hash.

        httpx takes only `bytes` or an iterable as content, so a view goes as a
        one-piece stream, which the wire transport writes straight to the socket.
        """
        content: bytes | AsyncIterator[memoryview] = (
            data if isinstance(data, bytes) else _whole(data))
        op = ops.put_chunk(sid, index, length=len(data), leaf_hash=leaf_hash,
                           checksum=checksum, lease_token=lease_token)
        await self._call(op, content)

    async def commit(self, sid: str, *, expected_offset: int, chunks: list[ChunkRow],
                     lease_token: int | None = None) -> CommitOut:
        """Make staged chunks visible; return the new committed offset and chunk count."""
        op = ops.commit(sid, expected_offset=expected_offset, chunks=chunks,
                        lease_token=lease_token)
        return await self._answer(op)

    async def discard_staged(self, sid: str, *, lease_token: int | None = None) -> list[int]:
        """Remove the session's staged, uncommitted chunks; return their indexes."""
        return (await self._answer(ops.discard_staged(sid, lease_token))).discarded

    async def acquire_lease(self, sid: str, *, holder: str, ttl_seconds: float) -> LeaseOut:
        """Take the session's writer lease; 409 upload_in_progress while another holds it."""
        return await self._answer(ops.acquire_lease(sid, holder=holder, ttl_seconds=ttl_seconds))

    async def renew_lease(self, sid: str, *, holder: str, token: int,
                          ttl_seconds: float) -> LeaseOut:
        """Extend the held lease; 409 lease_lost once another writer took it over."""
        return await self._answer(ops.renew_lease(sid, holder=holder, token=token,
                                                  ttl_seconds=ttl_seconds))

    async def release_lease(self, sid: str, *, holder: str, token: int) -> None:
        await self._call(ops.release_lease(sid, holder=holder, token=token))

    async def chunks(self, sid: str, *, count: int) -> list[ChunkRow]:
        """Return the first `count` committed chunk rows, paging through storage."""
        rows: list[ChunkRow] = []
        while len(rows) < count:
            op = ops.list_chunks(sid, start=len(rows), limit=min(CHUNK_PAGE, count - len(rows)))
            page = [c.to_entry() for c in (await self._answer(op)).items]
            if not page:
                break
            rows.extend(page)
        return rows

    async def leaves(self, sid: str, *, size: int) -> list[bytes]:
        """Return the first `size` committed leaf hashes."""
        raw = (await self._call(ops.leaves(sid, size=size))).content
        if len(raw) != 32 * size:
            raise UpstreamUnavailable("session storage returned a short leaf list")
        return [raw[i:i + 32] for i in range(0, len(raw), 32)]

    async def get_chunk(self, sid: str, index: int) -> bytes:
        return (await self._call(ops.get_chunk(sid, index))).content

    async def read_chunk_into(self, sid: str, index: int, buf: memoryview) -> memoryview:
        """Read a chunk's sealed bytes into `buf`; return the view of them.

        Saves allocating (and joining) a chunk-sized object per chunk on replay.  An
        answer that breaks off after it began (a reset, a storage restart, an S3 hiccup
        behind storage) is resumed from the byte it reached, `Range: bytes=n-`, after
        each wait of RESUME_DELAYS in turn; the bytes only land in `buf`, and the caller
        authenticates the whole chunk before any of it is used.  Raises ChunkOverflow if
        storage sends more bytes than `buf` holds (a stored chunk longer than any sealed
        chunk can be), ServiceError as `get_chunk` does.
        """
        got = _ChunkBytes(index, buf)
        delays = iter(RESUME_DELAYS)
        while True:
            try:
                await self._read_from(sid, got)
                return got.view()
            except _BrokeOff as exc:
                delay = next(delays, None)
                if delay is None:
                    raise UpstreamUnavailable("session storage broke off a chunk") from exc
                log.warning("chunk %d of session %s broke off at byte %d (%s); resuming in "
                            "%.2f s", index, sid, got.n, exc, delay)
                await asyncio.sleep(delay)

    async def _read_from(self, sid: str, got: _ChunkBytes) -> None:
        """Read chunk `got.index` from byte `got.n` to its end into `got`.

        Raises _BrokeOff if the answer breaks off, or if a resumed read finds storage not
        answering; UpstreamUnavailable if the first read does.
        """
        op = ops.get_chunk(sid, got.index, start=got.n)
        try:
            resp = await self._send(op)
        except httpx.HTTPError as exc:
            if got.began:
                raise _BrokeOff(type(exc).__name__) from exc
            log_tls_failure(log, exc, "session storage")
            raise UpstreamUnavailable("session storage is not answering") from exc
        try:
            if resp.status_code >= 400:
                raise _error(resp.status_code, await resp.aread())
            try:
                got.announced(ops.chunk_span(resp.status_code, resp.headers, start=got.n))
            except MalformedAnswer as exc:
                log.error("session storage answered outside the contract: %s", exc)
                raise UpstreamUnavailable("session storage sent a malformed chunk") from None
            async for piece in resp.aiter_raw():
                got.add(piece)
        except httpx.TransportError as exc:
            raise _BrokeOff(type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable("session storage broke off a chunk") from exc
        finally:
            await resp.aclose()
        if got.size is not None and got.n < got.size:
            raise _BrokeOff("a short body")

    async def finalize(self, sid: str, *, root_hash: bytes, checkpoint: str,
                       manifest: bytes, lease_token: int | None = None) -> SessionRow:
        op = ops.finalize(sid, root_hash=root_hash, checkpoint=checkpoint, manifest=manifest,
                          lease_token=lease_token)
        return await self._answer(op)

    async def manifest(self, sid: str) -> bytes:
        return (await self._call(ops.get_manifest(sid))).content

    async def manifest_or_none(self, sid: str) -> bytes | None:
        """Return the stored manifest bytes, or None if the session has none (404 or 409)."""
        try:
            return await self.manifest(sid)
        except (NotFound, InvalidState):
            return None

    async def keep_checkpoint(self, sid: str, checkpoint: bytes, *,
                              lease_token: int | None = None) -> None:
        """Store the processor's last signed checkpoint of a recording session (its anchor)."""
        await self._call(ops.put_checkpoint(sid, checkpoint, lease_token))

    async def kept_checkpoint(self, sid: str) -> bytes | None:
        """Return the last signed checkpoint storage keeps for the session, or None (204)."""
        try:
            resp = await self._call(ops.get_checkpoint(sid))
        except NotFound:
            return None
        return resp.content if resp.status_code == 200 else None

    async def delete(self, sid: str) -> None:
        await self._call(ops.delete_session(sid))

    async def set_hold(self, sid: str, *, hold: bool, expected_key_id: str,
                       wrapped: WrappedKey) -> SessionRow:
        body = HoldIn(legal_hold=hold, expected_key_id=expected_key_id,
                      wrapped_key=WrappedKeyModel.of(wrapped))
        return await self._answer(ops.set_hold(sid, body))

    async def expired(self, *, before: str, limit: int) -> list[SessionRow]:
        """Return live sessions, not held, that expired at or before `before`, oldest first."""
        return (await self._answer(ops.expired(before=before, limit=limit))).items

    async def idle(self, *, state: SessionState, before: str, limit: int) -> list[SessionRow]:
        """Return sessions in `state` unchanged since `before`, oldest first."""
        return (await self._answer(ops.idle(state=state, before=before, limit=limit))).items

    async def key_usage(self) -> dict[str, int]:
        """Return {key id: sessions holding a wrapped key under it}."""
        return (await self._answer(ops.key_usage())).key_ids

    # -- the audit log -------------------------------------------------------------------------

    async def audit_head(self) -> tuple[int, bytes]:
        """Return (entries stored, hash of the last entry)."""
        head = await self._answer(ops.audit_head())
        return head.size, bytes.fromhex(head.head)

    async def append_audit(self, entry: AuditEntry, checkpoint: bytes) -> None:
        """Append entry with the signed head ending with it; Conflict if the log moved on."""
        body = AuditAppend(entry=AuditEntryModel.of(entry), checkpoint=checkpoint.decode())
        await self._call(ops.append_audit(body))

    async def audit_page(self, params: Mapping[str, str]) -> AuditPage:
        return await self._answer(ops.audit_page(params))

    async def audit_checkpoint(self) -> bytes | None:
        """Return the signed head of the audit log, or None before its first entry (204)."""
        resp = await self._call(ops.audit_checkpoint())
        return resp.content if resp.status_code == 200 else None

    async def stats(self) -> dict[str, int]:
        return (await self._answer(ops.stats())).sessions_by_state


def _error(status: int, body: bytes) -> ServiceError:
    """Return the ServiceError storage's error answer stands for (`decode_error` reads it)."""
    reply = decode_error(status, body)
    if not reply.recognised:
        return error_from_body(status, None)
    return error_from_body(status, {"error": reply.code, "detail": reply.detail, **reply.extra})
