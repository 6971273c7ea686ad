"""Read paths: verified plaintext replay and the sealed chunk as stored."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from sessions.common.web import CutOnErrorResponse
from sessions.processor.deps import EngineDep, SessionId

router = APIRouter(prefix="/internal/v1/sessions", tags=["replay"])


@router.get("/{session_id}/replay")
async def replay(session_id: SessionId, request: Request, engine: EngineDep) -> Response:
    stream = await engine.replay(session_id, request.headers.get("range"))
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(stream.length),
               "Cache-Control": "no-store"}
    status = 200
    if stream.range is not None:
        status = 206
        headers["Content-Range"] = (f"bytes {stream.range.start}-{stream.range.end - 1}"
                                    f"/{stream.size}")
    return CutOnErrorResponse(stream.body, status_code=status, headers=headers,
                             media_type="application/octet-stream")


@router.get("/{session_id}/chunks/{index}")
async def sealed_chunk(session_id: SessionId, engine: EngineDep,
                       index: Annotated[int, Path(ge=0, le=2**40)]) -> Response:
    data = await engine.storage.get_chunk(session_id, index)
    engine.metrics.bytes_out.labels("processor", "sealed").inc(len(data))
    return Response(data, media_type="application/octet-stream")
