"""The data lifecycle: legal hold, and the retention sweep's indexed questions."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from sessions.common.errors import error_responses
from sessions.common.states import SessionState
from sessions.storage.deps import Meta, SessionId
from sessions.storage.models import HoldIn, KeyUsageOut, SessionList, SessionOut

router = APIRouter(prefix="/internal/v1", tags=["lifecycle"])

TIME_DOC = {"pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"}
Before = Annotated[str, Query(description="RFC 3339 UTC, microseconds and Z",
                              json_schema_extra=TIME_DOC)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.put("/sessions/{session_id}/hold", summary="Set or release the legal hold",
            responses=error_responses(404, 409))
async def set_hold(session_id: SessionId, body: HoldIn, meta: Meta) -> SessionOut:
    """Return the session with the hold and its rewrapped key; 409 unless the stored key id is
    `expected_key_id` (`conflict`) or if the key was erased (`invalid_state`)."""
    return SessionOut.of(await meta.set_hold(
        session_id, hold=body.legal_hold, expected_key_id=body.expected_key_id,
        wrapped=body.wrapped_key.to_record()))


@router.get("/expired", summary="Live sessions past their expiry, not held, oldest first",
            responses=error_responses(422))
async def expired(meta: Meta, before: Before, limit: Limit = 100) -> SessionList:
    """Return up to `limit` sessions with `expires_at <= before` and no legal hold."""
    records = await meta.list_expired(before=before, limit=limit)
    return SessionList(items=[SessionOut.of(r) for r in records], next_cursor=None)


@router.get("/idle", summary="Sessions in a state unchanged since a time, oldest first",
            responses=error_responses(409, 422))
async def idle(meta: Meta, state: Literal["recording", "finalizing"], before: Before,
               limit: Limit = 100) -> SessionList:
    """Return up to `limit` sessions in `state` whose `updated_at < before`."""
    records = await meta.list_idle(state=SessionState(state), before=before, limit=limit)
    return SessionList(items=[SessionOut.of(r) for r in records], next_cursor=None)


@router.get("/key-usage", summary="Sessions per wrapping key id")
async def key_usage(meta: Meta) -> KeyUsageOut:
    """Return how many sessions hold a wrapped key under each key id."""
    return KeyUsageOut(key_ids=await meta.key_usage())
