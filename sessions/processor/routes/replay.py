"""Read paths: verified plaintext replay and the sealed chunk as stored."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from sessions.common.errors import error_responses
from sessions.common.models import MAX_CHUNK_INDEX, RANGE_DOC
from sessions.common.web import CutOnErrorResponse
from sessions.processor.deps import AuditDep, EngineDep, SessionId

router = APIRouter(prefix="/internal/v1/sessions", tags=["replay"])
_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                               "format": "binary"}}}}


@router.get("/{session_id}/replay", response_class=Response, responses={
    200: _BINARY, 206: _BINARY, **error_responses(404, 409, 416, 502)})
async def replay(session_id: SessionId, engine: EngineDep, audit: AuditDep,
                 byte_range: Annotated[str | None, Header(alias="Range", description=RANGE_DOC)]
                 = None) -> Response:
    """Stream the verified plaintext: 200 whole, 206 one range (sessions/common/ranges.py)."""
    stream = await engine.replay(session_id, byte_range)
    await audit("replay", session_id, "whole" if stream.range is None else
                f"bytes={stream.range.start}-{stream.range.end - 1}")
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(stream.length),
               "Cache-Control": "no-store"}
    status = 200
    if stream.range is not None:
        status = 206
        headers["Content-Range"] = (f"bytes {stream.range.start}-{stream.range.end - 1}"
                                    f"/{stream.size}")
    return CutOnErrorResponse(stream.body, status_code=status, headers=headers,
                             media_type="application/octet-stream")


@router.get("/{session_id}/chunks/{index}", response_class=Response,
            responses={200: _BINARY, **error_responses(404, 409)})
async def sealed_chunk(session_id: SessionId, engine: EngineDep,
                       index: Annotated[int, Path(ge=0, le=MAX_CHUNK_INDEX)]) -> Response:
    return Response(await engine.sealed_chunk(session_id, index),
                    media_type="application/octet-stream")
