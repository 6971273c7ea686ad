"""`/v1/sessions/{id}/upload`: the resumable upload protocol (HEAD, GET, PATCH)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from sessions.api.deps import MetricsDep, Processor, SessionId, SettingsDep, authenticate
from sessions.api.limits import check_upload_headers, session_room
from sessions.api.models import errors
from sessions.api.streams import limited_body
from sessions.common import checksums
from sessions.common.openapi import REQUIRED
from sessions.contract.models import UploadResult, UploadStatus

OFFSET_DOC = {"pattern": "^[0-9]{1,19}$", REQUIRED: True}
CHECKSUM_DOC = {"pattern": checksums.PATTERN}

router = APIRouter(prefix="/v1/sessions/{session_id}/upload", tags=["upload"],
                   dependencies=[Depends(authenticate)],
                   responses=errors(400, 401, 404, 409, 503))

PROTOCOL = """
**Upload protocol.**  Ask where to continue (`HEAD` or `GET`), then send the bytes from
there with `PATCH`, each request carrying `Upload-Offset` = the committed offset.

* Send **multiples of `chunk_size`** per request (`GET` tells it; 8 MiB by default).
  The tail of *every* request becomes a short chunk, so odd-sized requests waste chunks.
* Each request is all-or-nothing on a chunk basis: on failure, ask the offset again and
  resume from it.  A `409 offset_mismatch` body carries the committed `"offset"`.
* With `Upload-Checksum: <algorithm> <base64 digest>` of the request's bytes (`crc32c`,
  the CLI's, or `sha256`, `sha1`, `md5`), a corrupted request fails with
  `460 checksum_mismatch` and commits nothing.
* `POST .../finalize` when done.
"""


@router.head("", responses={200: {"headers": {"Upload-Offset": {
    "description": "committed bytes", "schema": {"type": "integer"}}}}},
             summary="Committed offset (header only)", description=PROTOCOL)
async def upload_offset(session_id: SessionId, processor: Processor) -> Response:
    status = await processor.upload_status(session_id)
    return Response(headers={"Upload-Offset": str(status.offset), "Cache-Control": "no-store"})


@router.get("", response_model=UploadStatus, summary="Upload status: offset and chunk size",
            description=PROTOCOL)
async def upload_status(session_id: SessionId, processor: Processor) -> UploadStatus:
    return await processor.upload_status(session_id)


@router.patch("", response_model=UploadResult, responses=errors(408, 409, 413, 415, 460, 507),
              summary="Append bytes at Upload-Offset", description=PROTOCOL, openapi_extra={
                  "requestBody": {"required": True, "content": {
                      "application/offset+octet-stream": {"schema": {
                          "type": "string", "format": "binary"}},
                      "application/octet-stream": {"schema": {
                          "type": "string", "format": "binary"}}}}})
async def upload(
    session_id: SessionId, request: Request, processor: Processor, settings: SettingsDep,
    metrics: MetricsDep,
    upload_offset: Annotated[str | None, Header(description="committed offset this request "
                                                "starts at (required)",
                                                json_schema_extra=OFFSET_DOC)] = None,
    upload_checksum: Annotated[str | None, Header(description="`<algorithm> <base64 digest>` "
                                                  "of this request's body (crc32c, sha256, "
                                                  "sha1 or md5)",
                                                  json_schema_extra=CHECKSUM_DOC)] = None,
) -> Response:
    """Stream the body to the processor, which chunks, seals and commits it."""
    headers = check_upload_headers(offset=upload_offset,
                                   content_type=request.headers.get("content-type"),
                                   content_length=request.headers.get("content-length"),
                                   checksum=upload_checksum,
                                   max_bytes=settings.max_upload_bytes)
    room = session_room(int(headers["Upload-Offset"]), headers.get("Content-Length"),
                        max_session_bytes=settings.max_session_bytes)
    counter = metrics.bytes_in.labels(metrics.service, "upload")
    body = limited_body(request, limit=min(settings.max_upload_bytes, room), count=counter.inc,
                        stall_timeout=settings.body_read_timeout)
    result, new_offset = await processor.upload(session_id, body, headers)
    offset = new_offset if new_offset is not None else str(result.offset)
    return JSONResponse(result.model_dump(),
                        headers={"Upload-Offset": offset, "Cache-Control": "no-store"})
