"""Session records: create, list, read, change state, finalize, manifest, delete, stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import StringConstraints

from sessions.common.errors import BadRequest, error_responses
from sessions.common.ids import SESSION_ID_DOC
from sessions.common.states import SessionState
from sessions.contract.storage import (
    MAX_LABELS,
    CreateSessionIn,
    FinalizeIn,
    RewrapIn,
    StatsOut,
    StoredSession,
    StoredSessionPage,
    TransitionIn,
    UploadLengthIn,
)
from sessions.storage.deps import Meta, Service, SessionId
from sessions.storage.models import (
    new_session,
    parse_label_filters,
    session_page,
    stored_session,
    wrapped_key,
)

router = APIRouter(prefix="/internal/v1", tags=["sessions"])


@router.post("/sessions", status_code=201, summary="Create a recording session",
             responses=error_responses(400, 409))
async def create_session(body: CreateSessionIn, meta: Meta) -> StoredSession:
    """Return the new session; 409 `conflict` if the id exists."""
    return stored_session(await meta.create_session(new_session(body)))


@router.get("/sessions", summary="List sessions, newest first")
async def list_sessions(
        meta: Meta, state: SessionState | None = None,
        label: Annotated[list[Annotated[str, StringConstraints(pattern="^[^:]+:")]] | None,
                         Query(description="key:value, repeatable", max_length=MAX_LABELS)
                         ] = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page",
                                            json_schema_extra=SESSION_ID_DOC)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> StoredSessionPage:
    """Return one page of sessions matching state and every label; `next_cursor` continues."""
    records, next_cursor = await meta.list_sessions(
        state=state, labels=parse_label_filters(label or []), cursor=cursor, limit=limit)
    return session_page(records, next_cursor)


@router.get("/sessions/{session_id}", summary="Read one session",
            responses=error_responses(404))
async def get_session(session_id: SessionId, meta: Meta) -> StoredSession:
    return stored_session(await meta.get_session(session_id))


@router.post("/sessions/{session_id}/state", summary="Change state (compare-and-set)",
             responses=error_responses(404, 409))
async def change_state(session_id: SessionId, body: TransitionIn,
                       service: Service) -> StoredSession:
    """Return the session in state `to`; 409 `invalid_state` unless it was in `from`,
    409 `lease_lost` if `lease_token` is given and stale (as for a commit)."""
    if body.to is SessionState.DELETED:
        raise BadRequest("delete a session with DELETE /internal/v1/sessions/{id}")
    return stored_session(await service.transition(session_id, to=body.to,
                                                   allowed_from=body.from_,
                                                   lease_token=body.lease_token))


@router.post("/sessions/{session_id}/finalize", summary="Complete a finalizing session",
             responses=error_responses(404, 409))
async def finalize(session_id: SessionId, body: FinalizeIn, meta: Meta) -> StoredSession:
    """Return the completed session; a repeat with the same root hash is a no-op.

    409 `lease_lost` if `lease_token` is stale, or absent while a writer holds the lease
    (unless already completed so).
    """
    rec = await meta.finalize(session_id, root_hash=bytes.fromhex(body.root_hash),
                              checkpoint=body.checkpoint,
                              manifest=body.manifest.encode("utf-8"),
                              lease_token=body.lease_token)
    return stored_session(rec)


@router.get("/sessions/{session_id}/manifest", summary="The canonical manifest",
            response_class=Response,
            responses={200: {"content": {"application/json": {}}}, **error_responses(404, 409)})
async def get_manifest(session_id: SessionId, meta: Meta) -> Response:
    """Return the manifest bytes exactly as stored, whatever the recorded state says.

    None stored: 409 `invalid_state` before completion (as the processor answers),
    404 `not_found` for a completed session without one.  The processor judges the
    state: it checks a stored manifest against its signature even when the record's
    state was edited.
    """
    return Response(await meta.get_manifest(session_id), media_type="application/json")


@router.put("/sessions/{session_id}/wrapped-key", summary="Swap the wrapped key (rotation)",
            responses=error_responses(404, 409))
async def replace_wrapped_key(session_id: SessionId, body: RewrapIn,
                              meta: Meta) -> StoredSession:
    """Return the session with its key rewrapped; 409 unless it had `expected_key_id`."""
    return stored_session(await meta.replace_wrapped_key(
        session_id, expected_key_id=body.expected_key_id, wrapped=wrapped_key(body.wrapped_key)))


@router.put("/sessions/{session_id}/upload-length", summary="Declare the total length once",
            responses=error_responses(404, 409))
async def set_upload_length(session_id: SessionId, body: UploadLengthIn,
                            meta: Meta) -> StoredSession:
    """Return the session with `upload_length` set; 409 `conflict` if another was declared
    or more bytes are committed, 409 `invalid_state` unless recording, 409 `lease_lost` if
    `lease_token` is stale or absent while a writer holds the lease (as for a commit)."""
    return stored_session(await meta.set_upload_length(session_id, body.upload_length,
                                                       body.lease_token))


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response,
               summary="Crypto-erase a session, then remove its chunks",
               responses=error_responses(404, 409))
async def delete_session(session_id: SessionId, service: Service) -> Response:
    await service.delete(session_id)
    return Response(status_code=204)


@router.get("/stats", summary="Sessions by state")
async def stats(meta: Meta) -> StatsOut:
    return StatsOut(sessions_by_state=await meta.count_by_state())
