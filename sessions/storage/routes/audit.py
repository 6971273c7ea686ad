"""The audit log: append an entry with its signed head, read pages, read the head.

Storage checks the chain's shape (the next sequence number, the previous hash);
the processor signs the head and `lucid-sessions audit verify` checks the signature.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from sessions.common.errors import BadRequest, error_responses
from sessions.common.evidence import (
    MAX_AUDIT_PAGE,
    AuditAppend,
    AuditEntryModel,
    AuditHead,
    AuditPage,
)
from sessions.common.ids import SESSION_ID_DOC
from sessions.core import AuditError
from sessions.storage.deps import Meta

router = APIRouter(prefix="/internal/v1/audit", tags=["audit"])


@router.post("", status_code=201, summary="Append one entry and its signed head",
             responses=error_responses(400, 409))
async def append(body: AuditAppend, meta: Meta) -> AuditHead:
    """Return the new size; 409 `conflict` (with `size`) if the entry is not the next link."""
    try:
        entry = body.entry.to_core()
    except AuditError as exc:
        raise BadRequest("malformed audit entry") from exc
    size = await meta.append_audit(entry, body.checkpoint)
    return AuditHead(size=size, head=entry.hash().hex())


@router.get("", summary="Entries by sequence number", responses=error_responses(400, 502))
async def list_entries(
        meta: Meta, start: Annotated[int, Query(ge=0, le=(1 << 62))] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
        session_id: Annotated[str | None, Query(json_schema_extra=SESSION_ID_DOC)] = None,
) -> AuditPage:
    entries, next_start = await meta.list_audit(start=start, session_id=session_id,
                                                limit=limit)
    return AuditPage(items=[AuditEntryModel.of(e) for e in entries], next_start=next_start)


@router.get("/head", summary="The stored size and last entry hash", responses=error_responses(502))
async def head(meta: Meta) -> AuditHead:
    size, last = await meta.audit_head()
    return AuditHead(size=size, head=last.hex())


@router.get("/checkpoint", response_class=Response,
            responses={200: {"content": {"text/plain": {}}},
                       204: {"description": "no entry yet"}},
            summary="The signed head of the audit log")
async def checkpoint(meta: Meta) -> Response:
    text = await meta.audit_checkpoint()
    if text is None:
        return Response(status_code=204)
    return Response(text, media_type="text/plain; charset=utf-8")
