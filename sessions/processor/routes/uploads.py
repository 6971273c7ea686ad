"""Resumable upload: `/internal/v1/sessions/{id}/upload` (HEAD, GET, PATCH)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sessions.common import checksums
from sessions.common.bodies import request_body
from sessions.common.errors import BadRequest, InvalidState, UnsupportedMediaType, error_responses
from sessions.common.states import SessionState
from sessions.contract.models import Session, UploadResult, UploadStatus
from sessions.processor.deps import AuditDep, EngineDep, SessionId
from sessions.processor.engine import Engine

router = APIRouter(prefix="/internal/v1/sessions", tags=["uploads"])

UPLOAD_TYPES = ("application/offset+octet-stream", "application/octet-stream")
# The gateway enforces the per-request limit clients see; this only bounds a rogue caller.
MAX_REQUEST_BYTES = 1 << 40


def _non_negative(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise BadRequest(f"{name} must be a non-negative decimal integer")
    return int(value)


_UPLOAD_DOC = {
    "requestBody": {"required": True, "content": {t: {"schema": {"type": "string",
                                                                  "format": "binary"}}
                                                  for t in UPLOAD_TYPES}},
    "parameters": [
        {"name": "Upload-Offset", "in": "header", "required": True,
         "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}},
        {"name": "Upload-Checksum", "in": "header", "required": False,
         "description": "`<algorithm> <base64 digest>` of the body, an algorithm of "
                        + ", ".join(checksums.ALGORITHMS),
         "schema": {"type": "string", "pattern": checksums.PATTERN}}]}


async def _live(engine: Engine, session_id: str) -> Session:
    """Return the session unless it is deleted (409 `invalid_state`: its upload is gone)."""
    session = await engine.get(session_id)
    if session.state == SessionState.DELETED:
        raise InvalidState("the session was deleted", extra={"state": session.state.value})
    return session


@router.head("/{session_id}/upload", responses=error_responses(404, 409))
async def upload_offset_head(session_id: SessionId, engine: EngineDep) -> Response:
    session = await _live(engine, session_id)
    return Response(headers={"Upload-Offset": str(session.offset),
                             "Cache-Control": "no-store"})


@router.get("/{session_id}/upload", responses=error_responses(404, 409))
async def upload_status(session_id: SessionId, engine: EngineDep) -> UploadStatus:
    s = await _live(engine, session_id)
    return UploadStatus(offset=s.offset, chunk_count=s.chunk_count, chunk_size=s.chunk_size,
                        state=s.state)


@router.patch("/{session_id}/upload", openapi_extra=_UPLOAD_DOC,
              response_model=UploadResult,
              responses=error_responses(404, 408, 409, 413, 415, 460, 507))
async def upload(session_id: SessionId, request: Request, engine: EngineDep,
                 audit: AuditDep) -> Response:
    """Append the body; one `append` audit entry per request that committed bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in UPLOAD_TYPES:
        raise UnsupportedMediaType("Content-Type must be application/offset+octet-stream")
    offset = _non_negative(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise BadRequest("the Upload-Offset header is required")
    done = await engine.upload(
        session_id, offset=offset,
        source=request_body(request, stall_timeout=engine.settings.body_read_timeout),
        checksum_header=request.headers.get("upload-checksum"),
        content_length=_non_negative(request.headers.get("content-length"), "Content-Length"),
        max_bytes=MAX_REQUEST_BYTES)
    if done.offset > offset:
        await audit("append", session_id, f"bytes={offset}-{done.offset - 1}")
    return JSONResponse(done.model_dump(), headers={"Upload-Offset": str(done.offset)})
