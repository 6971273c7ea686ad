"""Session lifecycle, checkpoints and proofs: `/internal/v1/sessions`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from sessions.common.errors import error_responses
from sessions.common.ids import SESSION_ID_DOC
from sessions.common.models import (
    MAX_LABELS,
    MAX_PAGE,
    MAX_TREE_SIZE,
    LabelFilter,
    OwnedCreateSession,
    UploadLength,
    list_params,
)
from sessions.common.states import SessionState
from sessions.contract.models import (
    ConsistencyProof,
    InclusionProof,
    Session,
    SessionPage,
    VerifyReport,
)
from sessions.processor.deps import AuditDep, EngineDep, SessionId

router = APIRouter(prefix="/internal/v1/sessions", tags=["sessions"])


@router.post("", status_code=201)
async def create_session(body: OwnedCreateSession, engine: EngineDep,
                         audit: AuditDep) -> Session:
    created = await engine.create(body.labels, body.retention_days, body.upload_length,
                                  owner=body.owner)
    await audit("create", created.id)
    return created


@router.get("")
async def list_sessions(
        request: Request, engine: EngineDep,
        state: SessionState | None = None,  # noqa: ARG001 - declared for the contract
        label: Annotated[list[LabelFilter] | None,  # noqa: ARG001
                         Query(max_length=MAX_LABELS)] = None,
        cursor: Annotated[str | None, Query(json_schema_extra=SESSION_ID_DOC)] = None,  # noqa: ARG001
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,  # noqa: ARG001
) -> SessionPage:
    """Return one page of sessions; the parameters are checked once more by list_params."""
    return await engine.list_sessions(list_params(request.query_params.multi_items()))


@router.get("/{session_id}", responses=error_responses(404))
async def show_session(session_id: SessionId, engine: EngineDep) -> Session:
    return await engine.get(session_id)


@router.post("/{session_id}/finalize", responses=error_responses(404, 409))
async def finalize_session(session_id: SessionId, engine: EngineDep,
                           audit: AuditDep) -> Session:
    done = await engine.finalize(session_id)
    await audit("finalize", session_id, f"chunks={done.chunk_count}")
    return done


@router.put("/{session_id}/upload-length", responses=error_responses(404, 409))
async def set_upload_length(session_id: SessionId, body: UploadLength,
                            engine: EngineDep) -> Session:
    """Return the session with its total length declared (once), under its writer lease.

    409 `conflict` if another length was declared, `upload_in_progress` while another
    request or processor writes the session, `lease_lost` if this processor stalled past
    its lease and another took the session over (nothing declared).
    """
    return await engine.set_upload_length(session_id, body.upload_length)


@router.put("/{session_id}/hold", responses=error_responses(404, 409))
async def set_hold(session_id: SessionId, engine: EngineDep,
                   audit: AuditDep) -> Session:
    """Put the session under legal hold (its key is rewrapped under the master key)."""
    held = await engine.set_hold(session_id, True)
    await audit("hold", session_id)
    return held


@router.delete("/{session_id}/hold", responses=error_responses(404, 409))
async def release_hold(session_id: SessionId, engine: EngineDep,
                       audit: AuditDep) -> Session:
    """Release the legal hold (the key goes back under its retention period's key)."""
    released = await engine.set_hold(session_id, False)
    await audit("release", session_id)
    return released


@router.delete("/{session_id}", status_code=204, response_class=Response,
               responses=error_responses(404, 409))
async def delete_session(session_id: SessionId, engine: EngineDep,
                         audit: AuditDep) -> Response:
    await engine.delete(session_id)
    await audit("delete", session_id)
    return Response(status_code=204)


@router.get("/{session_id}/manifest", response_class=Response, responses={
    200: {"content": {"application/json": {}}}, **error_responses(404, 409)})
async def get_manifest(session_id: SessionId, engine: EngineDep) -> Response:
    """Return the manifest bytes as stored; 409 `invalid_state` unless the session is completed."""
    return Response(await engine.manifest(session_id), media_type="application/json")


@router.get("/{session_id}/checkpoint", response_class=Response, responses={
    200: {"content": {"text/plain": {}}}, **error_responses(404, 409)})
async def get_checkpoint(session_id: SessionId, engine: EngineDep,
                         size: Annotated[int | None, Query(ge=0, le=MAX_TREE_SIZE)] = None,
                         ) -> Response:
    note = await engine.checkpoint(session_id, size)
    return Response(note, media_type="text/plain; charset=utf-8")


@router.get("/{session_id}/proof/inclusion", responses=error_responses(404, 409))
async def inclusion_proof(session_id: SessionId, engine: EngineDep,
                          index: Annotated[int, Query(ge=0, le=MAX_TREE_SIZE)],
                          size: Annotated[int | None, Query(ge=0, le=MAX_TREE_SIZE)] = None,
                          ) -> InclusionProof:
    return await engine.inclusion(session_id, index, size)


@router.get("/{session_id}/proof/consistency", responses=error_responses(404, 409))
async def consistency_proof(session_id: SessionId, engine: EngineDep,
                            from_size: Annotated[int, Query(alias="from", ge=0,
                                                            le=MAX_TREE_SIZE)],
                            to_size: Annotated[int | None, Query(alias="to", ge=0,
                                                                 le=MAX_TREE_SIZE)] = None,
                            ) -> ConsistencyProof:
    return await engine.consistency(session_id, from_size, to_size)


@router.post("/{session_id}/verify", responses=error_responses(404, 409))
async def verify_session(session_id: SessionId, engine: EngineDep, audit: AuditDep,
                         sample: Annotated[float, Query(gt=0, le=100)] = 100) -> VerifyReport:
    report = await engine.verify(session_id, sample)
    await audit("verify", session_id, f"sample={sample:g} ok={report.ok}")
    return report
