"""`POST /internal/v1/sessions/{id}/upload/prefix-check`: is the committed plaintext this prefix?"""

from __future__ import annotations

from fastapi import APIRouter

from sessions.common.errors import error_responses
from sessions.common.models import PrefixCheck
from sessions.contract.models import PrefixCheckResult
from sessions.processor.deps import EngineDep, SessionId

router = APIRouter(prefix="/internal/v1/sessions", tags=["uploads"])


@router.post("/{session_id}/upload/prefix-check",
             responses=error_responses(404, 409, 422, 502))
async def prefix_check(session_id: SessionId, body: PrefixCheck,
                       engine: EngineDep) -> PrefixCheckResult:
    """Return whether SHA-256 of the committed plaintext equals `sha256` (constant time)."""
    return await engine.prefix_check(session_id, offset=body.offset, digest=body.digest())
