"""The node: its public verifier keys (with their history), key rotation, the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from sessions.common.errors import error_responses
from sessions.common.evidence import MAX_AUDIT_PAGE
from sessions.common.ids import SESSION_ID_DOC
from sessions.contract.models import AuditPage, KeyRotation, NodeInfo, RotateSigningIn
from sessions.processor.deps import AuditDep, EngineDep

router = APIRouter(prefix="/internal/v1", tags=["node"])


@router.get("/node")
async def node(engine: EngineDep) -> NodeInfo:
    return engine.node()


@router.post("/keys/rotate", responses=error_responses(409))
async def rotate_keys(engine: EngineDep, audit: AuditDep) -> KeyRotation:
    """Rewrap every session key under the current master key (chunks are not touched)."""
    report = await engine.rotate_keys()
    await audit("rotate_keys", None, f"rotated={report.rotated}")
    return report


@router.post("/keys/signing/rotate", responses=error_responses(409))
async def rotate_signing_key(engine: EngineDep, audit: AuditDep,
                             body: RotateSigningIn | None = None) -> NodeInfo:
    """Retire the signing key for a fresh one; 409 `rotation_refused` if it is file-managed."""
    after = None if body is None else body.compromised_after
    node = engine.rotate_signing_key(after)
    await audit("rotate_signing_key", None,
                "compromised_after=" + after if after else "retired")
    return node


@router.get("/audit", responses=error_responses(400, 502))
async def audit_log(engine: EngineDep,
                    start: Annotated[int, Query(ge=0, le=(1 << 62))] = 0,
                    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
                    session_id: Annotated[str | None,
                                          Query(json_schema_extra=SESSION_ID_DOC)] = None,
                    ) -> AuditPage:
    return await engine.audit_page(start=start, limit=limit, session_id=session_id)


@router.get("/audit/checkpoint", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, 204: {"description": "no entry"}})
async def audit_checkpoint(engine: EngineDep) -> Response:
    signed = await engine.audit_checkpoint()
    if signed is None:
        return Response(status_code=204)
    return Response(signed, media_type="text/plain; charset=utf-8")
