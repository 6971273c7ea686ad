"""`/v1/sessions`: create, list, show, finalize, delete, manifest, checkpoint, proofs, verify."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from sessions.api.deps import Client, Processor, SessionId, authenticate
from sessions.api.models import LabelFilter, SessionIdText, errors
from sessions.common.errors import InvalidParameter
from sessions.common.ids import SESSION_ID_DOC
from sessions.common.models import MAX_CHUNK_INDEX, MAX_LABELS, MAX_PAGE, MAX_TREE_SIZE
from sessions.common.states import SessionState
from sessions.contract.models import (
    ConsistencyProof,
    CreateSession,
    InclusionProof,
    OwnedCreateSession,
    Session,
    SessionPage,
    VerifyReport,
)
from sessions.contract.operations import session_query

router = APIRouter(prefix="/v1/sessions", tags=["sessions"],
                   dependencies=[Depends(authenticate)], responses=errors(401, 503))


@router.post("", status_code=201, response_model=Session, responses=errors(413, 422),
             summary="Create a session")
async def create_session(processor: Processor, client: Client,
                         body: CreateSession | None = None) -> Session:
    """Create an empty session in state `recording`; upload to it with PATCH .../upload.

    The session's `owner` is the id of the token that created it.
    """
    spec = body if body is not None else CreateSession.model_validate({})
    return await processor.create_session(OwnedCreateSession(
        labels=spec.labels, retention_days=spec.retention_days,
        upload_length=spec.upload_length, owner=client.token_id))


@router.get("", response_model=SessionPage, responses=errors(422), summary="List sessions")
async def list_sessions(
    processor: Processor,
    state: SessionState | None = None,
    label: Annotated[list[LabelFilter] | None,
                     Query(max_length=MAX_LABELS, description="`key:value`; repeat to AND")] = None,
    cursor: Annotated[SessionIdText | None, Query(description="next_cursor of the previous "
                                                  "page", json_schema_extra=SESSION_ID_DOC)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> SessionPage:
    """Return one page of sessions, newest first, filtered by state and labels."""
    return await processor.list_sessions(session_query(
        state=None if state is None else state.value, labels=label or [], limit=limit,
        cursor=cursor))


@router.get("/{session_id}", response_model=Session, responses=errors(400, 404),
            summary="Show a session")
async def show_session(session_id: SessionId, processor: Processor) -> Session:
    """Return the session; a deleted one is a tombstone (`state: deleted`, no data key).

    Every other operation on a deleted session answers 409 `invalid_state` (DELETE
    again: 204), so a client can tell an erased recording from an id never issued (404).
    """
    return await processor.get_session(session_id)


@router.delete("/{session_id}", status_code=204, response_class=Response,
               responses=errors(400, 404, 409), summary="Delete a session (crypto-erase)")
async def delete_session(session_id: SessionId, processor: Processor) -> Response:
    """Destroy the session's data key first, then its chunks.  Idempotent.

    409 `legal_hold` while the session is under legal hold (release it first).
    """
    await processor.delete_session(session_id)
    return Response(status_code=204)


@router.put("/{session_id}/hold", response_model=Session, responses=errors(400, 404, 409),
            summary="Put a session under legal hold (admin)")
async def set_hold(session_id: SessionId, processor: Processor) -> Session:
    """Block the session's deletion, by DELETE and by the retention sweep, until released.

    Idempotent.  Its data key is rewrapped under the node's master key, so the end of its
    retention period does not erase it.  409 `invalid_state` if the session was erased.
    """
    return await processor.set_hold(session_id, True)


@router.delete("/{session_id}/hold", response_model=Session, responses=errors(400, 404, 409),
               summary="Release a session's legal hold (admin)")
async def release_hold(session_id: SessionId, processor: Processor) -> Session:
    """Release the hold; a session past its expiry is erased by the next retention sweep.

    Idempotent.  409 `invalid_state` if the session was erased.
    """
    return await processor.set_hold(session_id, False)


@router.post("/{session_id}/finalize", response_model=Session, responses=errors(400, 404, 409),
             summary="Finalize a session")
async def finalize_session(session_id: SessionId, processor: Processor) -> Session:
    """Seal the Merkle root, sign the checkpoint, write the manifest; state becomes `completed`.

    Idempotent: finalizing a completed session returns it unchanged.
    """
    return await processor.finalize(session_id)


@router.get("/{session_id}/manifest", response_class=Response, responses={
    200: {"content": {"application/json": {}}, "description": "the canonical manifest bytes"},
    **errors(400, 404, 409)}, summary="The session's canonical manifest")
async def manifest(session_id: SessionId, processor: Processor) -> Response:
    """Return the manifest byte for byte as stored: its canonical form is what is signed.

    409 `invalid_state` unless the session is completed (the manifest is written at finalize).
    """
    return Response(await processor.manifest(session_id), media_type="application/json")


@router.get("/{session_id}/checkpoint", response_class=Response, responses={
    200: {"content": {"text/plain": {}}, "description": "a C2SP signed checkpoint"},
    **errors(400, 404, 409, 422)}, summary="A signed checkpoint of the session's tree")
async def checkpoint(session_id: SessionId, processor: Processor,
                     size: Annotated[int | None, Query(ge=0, le=MAX_TREE_SIZE,
                                                       description="tree size; default all "
                                                       "committed chunks")] = None) -> Response:
    """Return the C2SP signed checkpoint (origin `<node>/sessions/<id>`) for `size` chunks."""
    body = await processor.checkpoint(session_id, size)
    return Response(body, media_type="text/plain; charset=utf-8")


@router.get("/{session_id}/proof/inclusion", response_model=InclusionProof,
            responses=errors(400, 404, 409, 422), summary="Merkle inclusion proof of one chunk")
async def inclusion_proof(session_id: SessionId, processor: Processor,
                          index: Annotated[int, Query(ge=0, le=MAX_CHUNK_INDEX)],
                          size: Annotated[int | None, Query(ge=1, le=MAX_TREE_SIZE)] = None,
                          ) -> InclusionProof:
    """Return the RFC 9162 audit path of chunk `index` in the tree of `size` chunks."""
    if size is not None and index >= size:
        raise InvalidParameter("index must be below size")
    return await processor.inclusion_proof(session_id, index, size)


@router.get("/{session_id}/proof/consistency", response_model=ConsistencyProof,
            responses=errors(400, 404, 409, 422), summary="Merkle consistency proof of two sizes")
async def consistency_proof(session_id: SessionId, processor: Processor,
                            from_: Annotated[int, Query(alias="from", ge=0, le=MAX_TREE_SIZE)],
                            to: Annotated[int | None, Query(ge=0, le=MAX_TREE_SIZE,
                                                            description="default: all "
                                                            "committed chunks")] = None,
                            ) -> ConsistencyProof:
    """Return the RFC 9162 proof that the tree of `to` chunks extends the tree of `from`."""
    if to is not None and from_ > to:
        raise InvalidParameter("from must not exceed to")
    return await processor.consistency_proof(session_id, from_, to)


@router.post("/{session_id}/verify", response_model=VerifyReport,
             responses=errors(400, 404, 409, 422), summary="Verify the stored session")
async def verify_session(session_id: SessionId, processor: Processor,
                         sample: Annotated[float, Query(gt=0, le=100, description="percent of "
                                                        "chunks to check")] = 100,
                         ) -> VerifyReport:
    """Check signature, root and every sampled chunk (present, unaltered, opens)."""
    return await processor.verify(session_id, sample)
