"""The data lifecycle: legal hold, and the retention sweep's indexed questions."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from sessions.common.errors import error_responses
from sessions.common.states import SessionState
from sessions.contract.storage import HoldIn, KeyUsageOut, StoredSession, StoredSessionPage
from sessions.storage.deps import Meta, SessionId
from sessions.storage.models import session_page, stored_session, wrapped_key

router = APIRouter(prefix="/internal/v1", tags=["lifecycle"])

TIME_DOC = {"pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"}
Before = Annotated[str, Query(description="RFC 3339 UTC, microseconds and Z",
                              json_schema_extra=TIME_DOC)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.put("/sessions/{session_id}/hold", summary="Set or release the legal hold",
            responses=error_responses(404, 409))
async def set_hold(session_id: SessionId, body: HoldIn, meta: Meta) -> StoredSession:
    """Return the session with the hold and its rewrapped key; 409 unless the stored key id is
    `expected_key_id` (`conflict`) or if the key was erased (`invalid_state`)."""
    return stored_session(await meta.set_hold(
        session_id, hold=body.legal_hold, expected_key_id=body.expected_key_id,
        wrapped=wrapped_key(body.wrapped_key)))


@router.get("/expired", summary="Live sessions past their expiry, not held, oldest first",
            responses=error_responses(422))
async def expired(meta: Meta, before: Before, limit: Limit = 100) -> StoredSessionPage:
    """Return up to `limit` sessions with `expires_at <= before` and no legal hold."""
    return session_page(await meta.list_expired(before=before, limit=limit), None)


@router.get("/idle", summary="Sessions in a state unchanged since a time, oldest first",
            responses=error_responses(409, 422))
async def idle(meta: Meta, state: Literal["recording", "finalizing"], before: Before,
               limit: Limit = 100) -> StoredSessionPage:
    """Return up to `limit` sessions in `state` whose `updated_at < before`."""
    records = await meta.list_idle(state=SessionState(state), before=before, limit=limit)
    return session_page(records, None)


@router.get("/key-usage", summary="Sessions per wrapping key id")
async def key_usage(meta: Meta) -> KeyUsageOut:
    """Return how many sessions hold a wrapped key under each key id."""
    return KeyUsageOut(key_ids=await meta.key_usage())
