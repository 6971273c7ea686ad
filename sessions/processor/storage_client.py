"""The processor's client for session storage: one pooled HTTP connection set, typed calls.

httpx errors are translated here, once: storage's own error bodies come back as
the same `ServiceError`, a dead storage becomes `UpstreamUnavailable`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from sessions.common.errors import (
    InvalidState,
    NotFound,
    ServiceError,
    UpstreamUnavailable,
    error_from_body,
)
from sessions.common.evidence import AuditAppend, AuditEntryModel, AuditHead, AuditPage
from sessions.common.httpclient import service_client
from sessions.common.settings import Transport
from sessions.common.states import SessionState
from sessions.contract.models import Session
from sessions.core import AuditEntry, ChunkEntry, WrappedKey

_API = "/internal/v1"
CHUNK_PAGE = 10_000


class ChunkOverflow(Exception):
    """Storage sent more bytes for a chunk than the largest sealed chunk can have."""

    def __init__(self, index: int) -> None:
        super().__init__(f"chunk {index} is longer than any sealed chunk")
        self.index = index


async def _whole(view: memoryview) -> AsyncIterator[memoryview]:
    yield view


ChunkRow = ChunkEntry
"""One committed chunk as storage's metadata records it: the six facts a manifest entry holds."""


def chunk_row_from_json(d: dict[str, Any]) -> ChunkRow:
    return ChunkEntry(index=int(d["index"]), offset=int(d["offset"]), length=int(d["length"]),
                      sealed_length=int(d["sealed_length"]),
                      leaf_hash=bytes.fromhex(d["leaf_hash"]), compressed=bool(d["compressed"]))


def chunk_row_to_json(row: ChunkRow) -> dict[str, Any]:
    return {"index": row.index, "offset": row.offset, "length": row.length,
            "sealed_length": row.sealed_length, "leaf_hash": row.leaf_hash.hex(),
            "compressed": row.compressed}


@dataclass(frozen=True)
class SessionRow:
    """A session record as storage returns it (the wrapped key never leaves the processor)."""

    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def state(self) -> SessionState:
        return SessionState(self.raw["state"])

    @property
    def offset(self) -> int:
        return int(self.raw["offset"])

    @property
    def chunk_count(self) -> int:
        return int(self.raw["chunk_count"])

    @property
    def chunk_size(self) -> int:
        return int(self.raw["chunk_size"])

    @property
    def zstd_level(self) -> int:
        return int(self.raw["zstd_level"])

    @property
    def upload_length(self) -> int | None:
        value = self.raw.get("upload_length")
        return None if value is None else int(value)

    @property
    def wrapped_key(self) -> WrappedKey | None:
        wk = self.raw.get("wrapped_key")
        return WrappedKey.from_json(wk) if wk else None

    def public(self) -> Session:
        """Return the record without the wrapped key, for clients."""
        return Session.model_validate({k: v for k, v in self.raw.items() if k != "wrapped_key"})


class StorageClient:
    """Typed calls to storage's `/internal/v1` API over one reused connection pool."""

    def __init__(self, base_url: str, token: str, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 kind: Transport = Transport.WIRE) -> None:
        self._http = service_client(base_url, token, transport=transport, kind=kind,
                                    timeout=httpx.Timeout(60.0, connect=5.0))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, _API + path, **kw)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable("session storage is not answering") from exc
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    async def ready(self) -> None:
        try:
            resp = await self._http.get("/ready")
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable("session storage is not answering") from exc
        if resp.status_code != 200:
            raise UpstreamUnavailable("session storage is not ready")

    async def create_session(self, body: dict[str, Any]) -> SessionRow:
        return SessionRow((await self._call("POST", "/sessions", json=body)).json())

    async def tokens(self, method: str, path: str = "", body: dict[str, Any] | None = None) -> Any:
        """Return the JSON answer of one call to storage's token API (`/internal/v1/tokens`)."""
        return (await self._call(method, "/tokens" + path, json=body)).json()

    async def get_session(self, sid: str) -> SessionRow:
        return SessionRow((await self._call("GET", f"/sessions/{sid}")).json())

    async def list_sessions(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        page: dict[str, Any] = (await self._call("GET", "/sessions", params=params)).json()
        page["items"] = [SessionRow(item).public() for item in page["items"]]
        return page

    async def all_sessions(self) -> AsyncIterator[SessionRow]:
        """Yield every session record, wrapped keys included, following storage's cursors."""
        cursor: str | None = None
        while True:
            params = [("limit", "500")] + ([("cursor", cursor)] if cursor else [])
            page = (await self._call("GET", "/sessions", params=params)).json()
            for item in page["items"]:
                yield SessionRow(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def replace_wrapped_key(self, sid: str, *, expected_key_id: str,
                                  wrapped: WrappedKey) -> SessionRow:
        body = {"expected_key_id": expected_key_id, "wrapped_key": wrapped.to_json()}
        return SessionRow((await self._call("PUT", f"/sessions/{sid}/wrapped-key",
                                            json=body)).json())

    async def set_upload_length(self, sid: str, length: int) -> SessionRow:
        body = {"upload_length": length}
        return SessionRow((await self._call("PUT", f"/sessions/{sid}/upload-length",
                                            json=body)).json())

    async def transition(self, sid: str, *, to: SessionState,
                         allowed_from: tuple[SessionState, ...]) -> SessionRow:
        body = {"to": to.value, "from": [s.value for s in allowed_from]}
        return SessionRow((await self._call("POST", f"/sessions/{sid}/state", json=body)).json())

    async def put_chunk(self, sid: str, index: int, data: bytes | memoryview,
                        leaf_hash: bytes) -> None:
        """Stage a sealed chunk; a memoryview (of a pooled buffer) is sent without a copy.

        httpx takes only `bytes` or an iterable as content, so a view goes as a
        one-piece stream, which the wire transport writes straight to the socket.
        """
        content: bytes | AsyncIterator[memoryview] = (
            data if isinstance(data, bytes) else _whole(data))
        await self._call("PUT", f"/sessions/{sid}/chunks/{index}", content=content,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(len(data)),
                                  "X-Lucid-Leaf-Hash": leaf_hash.hex()})

    async def commit(self, sid: str, *, expected_offset: int, chunks: list[ChunkRow]) -> SessionRow:
        body = {"expected_offset": expected_offset,
                "chunks": [chunk_row_to_json(c) for c in chunks]}
        return SessionRow((await self._call("POST", f"/sessions/{sid}/commit", json=body)).json())

    async def discard_staged(self, sid: str) -> list[int]:
        """Remove the session's staged, uncommitted chunks; return their indexes."""
        body = (await self._call("DELETE", f"/sessions/{sid}/staged")).json()
        return [int(i) for i in body["discarded"]]

    async def chunks(self, sid: str, *, count: int) -> list[ChunkRow]:
        """Return the first `count` committed chunk rows, paging through storage."""
        rows: list[ChunkRow] = []
        while len(rows) < count:
            params = {"start": len(rows), "limit": min(CHUNK_PAGE, count - len(rows))}
            items = (await self._call("GET", f"/sessions/{sid}/chunks", params=params)).json()
            page = [chunk_row_from_json(d) for d in items["items"]]
            if not page:
                break
            rows.extend(page)
        return rows

    async def leaves(self, sid: str, *, size: int) -> list[bytes]:
        """Return the first `size` committed leaf hashes."""
        raw = (await self._call("GET", f"/sessions/{sid}/leaves", params={"size": size})).content
        if len(raw) != 32 * size:
            raise UpstreamUnavailable("session storage returned a short leaf list")
        return [raw[i:i + 32] for i in range(0, len(raw), 32)]

    async def get_chunk(self, sid: str, index: int) -> bytes:
        return (await self._call("GET", f"/sessions/{sid}/chunks/{index}")).content

    async def read_chunk_into(self, sid: str, index: int, buf: memoryview) -> memoryview:
        """Read a chunk's sealed bytes into `buf`; return the view of them.

        Saves allocating (and joining) a chunk-sized object per chunk on replay.
        Raises ChunkOverflow if storage sends more bytes than `buf` holds (a stored
        chunk longer than any sealed chunk can be), ServiceError as `get_chunk` does.
        """
        n = 0
        async with self._stream_chunk(sid, index) as resp:
            try:
                async for piece in resp.aiter_raw():
                    end = n + len(piece)
                    if end > len(buf):
                        raise ChunkOverflow(index)
                    buf[n:end] = piece
                    n = end
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable("session storage broke off a chunk") from exc
        return buf[:n]

    @asynccontextmanager
    async def _stream_chunk(self, sid: str, index: int) -> AsyncIterator[httpx.Response]:
        """Yield storage's streaming 2xx response for a sealed chunk; raise its error otherwise."""
        req = self._http.build_request("GET", f"{_API}/sessions/{sid}/chunks/{index}")
        try:
            resp = await self._http.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable("session storage is not answering") from exc
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise _error(resp)
            yield resp
        finally:
            await resp.aclose()

    async def finalize(self, sid: str, *, root_hash: bytes, checkpoint: str,
                       manifest: bytes) -> SessionRow:
        body = {"root_hash": root_hash.hex(), "checkpoint": checkpoint,
                "manifest": manifest.decode("utf-8")}
        return SessionRow((await self._call("POST", f"/sessions/{sid}/finalize", json=body)).json())

    async def manifest(self, sid: str) -> bytes:
        return (await self._call("GET", f"/sessions/{sid}/manifest")).content

    async def manifest_or_none(self, sid: str) -> bytes | None:
        """Return the stored manifest bytes, or None if the session has none (404 or 409)."""
        try:
            return await self.manifest(sid)
        except (NotFound, InvalidState):
            return None

    async def keep_checkpoint(self, sid: str, checkpoint: bytes) -> None:
        """Store the processor's last signed checkpoint of a recording session (its anchor)."""
        await self._call("PUT", f"/sessions/{sid}/checkpoint",
                         json={"checkpoint": checkpoint.decode("utf-8")})

    async def kept_checkpoint(self, sid: str) -> bytes | None:
        """Return the last signed checkpoint storage keeps for the session, or None (204)."""
        try:
            resp = await self._call("GET", f"/sessions/{sid}/checkpoint")
        except NotFound:
            return None
        return resp.content if resp.status_code == 200 else None

    async def delete(self, sid: str) -> None:
        await self._call("DELETE", f"/sessions/{sid}")

    async def set_hold(self, sid: str, *, hold: bool, expected_key_id: str,
                       wrapped: WrappedKey) -> SessionRow:
        body = {"legal_hold": hold, "expected_key_id": expected_key_id,
                "wrapped_key": wrapped.to_json()}
        return SessionRow((await self._call("PUT", f"/sessions/{sid}/hold", json=body)).json())

    async def expired(self, *, before: str, limit: int) -> list[SessionRow]:
        """Return live sessions, not held, that expired at or before `before`, oldest first."""
        page = (await self._call("GET", "/expired", params={"before": before,
                                                            "limit": limit})).json()
        return [SessionRow(item) for item in page["items"]]

    async def idle(self, *, state: SessionState, before: str, limit: int) -> list[SessionRow]:
        """Return sessions in `state` unchanged since `before`, oldest first."""
        params = {"state": state.value, "before": before, "limit": limit}
        page = (await self._call("GET", "/idle", params=params)).json()
        return [SessionRow(item) for item in page["items"]]

    async def key_usage(self) -> dict[str, int]:
        """Return {key id: sessions holding a wrapped key under it}."""
        body = (await self._call("GET", "/key-usage")).json()
        return {str(k): int(v) for k, v in body["key_ids"].items()}
    # -- the audit log ---------------------------------------------------------------------

    async def audit_head(self) -> tuple[int, bytes]:
        """Return (entries stored, hash of the last entry)."""
        head = AuditHead.model_validate((await self._call("GET", "/audit/head")).json())
        return head.size, bytes.fromhex(head.head)

    async def append_audit(self, entry: AuditEntry, checkpoint: bytes) -> None:
        """Append entry with the signed head ending with it; Conflict if the log moved on."""
        body = AuditAppend(entry=AuditEntryModel.of(entry), checkpoint=checkpoint.decode())
        await self._call("POST", "/audit", json=body.model_dump())

    async def audit_page(self, params: dict[str, str]) -> AuditPage:
        return AuditPage.model_validate((await self._call("GET", "/audit", params=params)).json())

    async def audit_checkpoint(self) -> bytes | None:
        """Return the signed head of the audit log, or None before its first entry (204)."""
        resp = await self._call("GET", "/audit/checkpoint")
        return resp.content if resp.status_code == 200 else None

    async def stats(self) -> dict[str, int]:
        body = (await self._call("GET", "/stats")).json()
        return {str(k): int(v) for k, v in body.get("sessions_by_state", {}).items()}


def _error(resp: httpx.Response) -> ServiceError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    return error_from_body(resp.status_code, body)

