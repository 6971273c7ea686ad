"""Resumable upload: `/internal/v1/sessions/{id}/upload` (HEAD, GET, PATCH)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sessions.common.errors import BadRequest, UnsupportedMediaType
from sessions.processor.deps import EngineDep, SessionId

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


@router.head("/{session_id}/upload")
async def upload_offset_head(session_id: SessionId, engine: EngineDep) -> Response:
    session = await engine.get(session_id)
    return Response(headers={"Upload-Offset": str(session["offset"]),
                             "Cache-Control": "no-store"})


@router.get("/{session_id}/upload")
async def upload_status(session_id: SessionId, engine: EngineDep) -> dict[str, Any]:
    s = await engine.get(session_id)
    return {"offset": s["offset"], "chunk_count": s["chunk_count"],
            "chunk_size": s["chunk_size"], "state": s["state"]}


@router.patch("/{session_id}/upload")
async def upload(session_id: SessionId, request: Request, engine: EngineDep) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in UPLOAD_TYPES:
        raise UnsupportedMediaType("Content-Type must be application/offset+octet-stream")
    offset = _non_negative(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise BadRequest("the Upload-Offset header is required")
    done = await engine.upload(
        session_id, offset=offset, source=request.stream(),
        checksum_header=request.headers.get("upload-checksum"),
        content_length=_non_negative(request.headers.get("content-length"), "Content-Length"),
        max_bytes=MAX_REQUEST_BYTES)
    return JSONResponse(done, headers={"Upload-Offset": str(done["offset"])})
