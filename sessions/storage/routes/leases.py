"""Writer leases: one writer per session across processors, fenced by a token.

A processor takes a session's lease before it writes, renews it while it does and
releases it after.  Every write it makes (staging PUT, commit, discard, kept checkpoint,
declared length, state change, finalize) carries the lease's fencing token; storage
refuses a stale one with 409 `lease_lost`, so a processor paused past its lease cannot
write once another took the session over.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from sessions.common.errors import error_responses
from sessions.contract.storage import LeaseIn, LeaseOut, LeaseRelease, LeaseRenew
from sessions.storage.deps import Meta, SessionId
from sessions.storage.records import SessionRecord

router = APIRouter(prefix="/internal/v1", tags=["leases"])


@router.post("/sessions/{session_id}/lease", summary="Take a session's writer lease",
             responses=error_responses(404, 409, 422))
async def acquire(session_id: SessionId, body: LeaseIn, meta: Meta) -> LeaseOut:
    """Return the lease with a new fencing token (the last one plus one, never reused).

    409 `upload_in_progress` (with `lease_expires`) while another holder's lease is
    unexpired; an expired lease is taken over.  409 `invalid_state` once deleted.
    """
    rec = await meta.acquire_lease(session_id, holder=body.holder, ttl=body.ttl_seconds)
    return _lease(rec)


@router.post("/sessions/{session_id}/lease/renew", summary="Extend a held writer lease",
             responses=error_responses(404, 409, 422))
async def renew(session_id: SessionId, body: LeaseRenew, meta: Meta) -> LeaseOut:
    """Return the lease extended to now + ttl; 409 `lease_lost` unless holder holds token."""
    rec = await meta.renew_lease(session_id, holder=body.holder, token=body.token,
                                 ttl=body.ttl_seconds)
    return _lease(rec)


@router.post("/sessions/{session_id}/lease/release", status_code=204, response_class=Response,
             summary="Give a writer lease up", responses=error_responses(404, 422))
async def release(session_id: SessionId, body: LeaseRelease, meta: Meta) -> Response:
    """Release it if holder still holds token; otherwise nothing (idempotent)."""
    await meta.release_lease(session_id, holder=body.holder, token=body.token)
    return Response(status_code=204)


def _lease(rec: SessionRecord) -> LeaseOut:
    """Return the held lease of a record the lease operations just wrote."""
    return LeaseOut(holder=rec.lease_holder or "", token=rec.lease_token,
                    expires_at=rec.lease_expires or "")
