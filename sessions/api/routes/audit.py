"""The audit log: who did what to which session, when and from where (admin, auditor)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from sessions.api.deps import Processor, authenticate
from sessions.api.models import errors
from sessions.common.evidence import MAX_AUDIT_PAGE, AuditPage
from sessions.common.ids import SESSION_ID_DOC, check_session_id

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(authenticate)])


@router.get("", response_model=AuditPage, responses=errors(400, 401, 502, 503),
            summary="Audit entries in order, paged, optionally of one session")
async def audit_log(processor: Processor,
                    start: Annotated[int, Query(ge=0, le=(1 << 62),
                                                description="first sequence number")] = 0,
                    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
                    session_id: Annotated[str | None,
                                          Query(json_schema_extra=SESSION_ID_DOC)] = None,
                    ) -> AuditPage:
    """Return entries with seq ≥ start; `next_start` continues, None after the last.

    Each entry commits to the previous one's hash; `GET /v1/audit/checkpoint` is the
    signed head (`lucid-sessions audit verify` checks the whole chain against it).
    """
    return await processor.audit(start=start, limit=limit, session_id=None if session_id is None
                                 else check_session_id(session_id))


@router.get("/checkpoint", response_class=Response, responses={
    200: {"content": {"text/plain": {}}}, 204: {"description": "the log has no entry yet"},
    **errors(401, 503)}, summary="The signed head of the audit log (a C2SP checkpoint)")
async def audit_checkpoint(processor: Processor) -> Response:
    """Return `<node>/audit`, the entry count and the last entry's hash, signed by the node."""
    signed = await processor.audit_checkpoint()
    if signed is None:
        return Response(status_code=204)
    return Response(signed, media_type="text/plain; charset=utf-8")
