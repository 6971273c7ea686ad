"""The processor's last signed checkpoint of each session: kept here, checked there.

Storage does not interpret it; the processor verifies its own signature on it and
refuses to sign a tree that is not consistent with it (docs/architecture.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from sessions.common.errors import error_responses
from sessions.contract.storage import CheckpointIn
from sessions.storage.deps import Meta, SessionId

router = APIRouter(prefix="/internal/v1", tags=["checkpoints"])


@router.put("/sessions/{session_id}/checkpoint", status_code=204, response_class=Response,
            summary="Keep the last signed checkpoint of a recording session",
            responses=error_responses(404, 409))
async def put_checkpoint(session_id: SessionId, body: CheckpointIn, meta: Meta) -> Response:
    """Store it; 409 `invalid_state` unless the session is recording or finalizing, 409
    `lease_lost` if `lease_token` is stale (as for a commit)."""
    await meta.set_checkpoint(session_id, body.checkpoint, body.lease_token)
    return Response(status_code=204)


@router.get("/sessions/{session_id}/checkpoint", response_class=Response,
            responses={200: {"content": {"text/plain": {}}},
                       204: {"description": "none was kept yet (no chunk committed)"},
                       **error_responses(404, 409)},
            summary="The last signed checkpoint kept for a session")
async def get_checkpoint(session_id: SessionId, meta: Meta) -> Response:
    """Return it as stored; 204 if none was kept (the session exists: 404 means it does not)."""
    text = await meta.get_checkpoint(session_id)
    if text is None:
        return Response(status_code=204)
    return Response(text, media_type="text/plain; charset=utf-8")
