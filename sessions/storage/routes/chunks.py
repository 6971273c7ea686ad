"""Chunks: stage (PUT), commit, list, leaf hashes, read."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from sessions.common.bodies import request_body
from sessions.common.checksums import PATTERN as CHECKSUM_PATTERN
from sessions.common.checksums import Checksum
from sessions.common.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_responses,
)
from sessions.common.models import MAX_CHUNK_INDEX, MAX_TREE_SIZE
from sessions.contract.storage import (
    LEASE_TOKEN_HEADER,
    MAX_LEASE_TOKEN,
    ChunkList,
    ChunkModel,
    CommitIn,
    CommitOut,
    DiscardOut,
    PutChunkOut,
)
from sessions.storage.deps import ChunkIndex, Meta, Service, SessionId
from sessions.storage.models import chunk_records

router = APIRouter(prefix="/internal/v1", tags=["chunks"])

OCTET_STREAM = "application/octet-stream"
LEAF_HASH_HEADER = "X-Lucid-Leaf-Hash"
CHECKSUM_HEADER = "Upload-Checksum"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,19}")
RANGE_PATTERN = "^[bB][yY][tT][eE][sS]=([0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})$"
"""The shape of one range-spec; the route checks the rest (first <= last: 400, size: 416)."""
RANGE_DOC = ("one range of the sealed bytes, `bytes=first-last`, `bytes=first-` or "
             "`bytes=-suffix` (206); several ranges or bad syntax: 400 `invalid_range`")
_BINARY = {"content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}}


@router.put("/sessions/{session_id}/chunks/{index}", status_code=201,
            summary="Stage a sealed chunk (not visible until committed)",
            responses=error_responses(404, 409, 413, 415, 507), openapi_extra={
                "requestBody": {**_BINARY, "required": True},
                "parameters": [{"name": LEAF_HASH_HEADER, "in": "header", "required": True,
                                "description": "hex SHA-256 leaf hash of the body (RFC 9162)",
                                "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}},
                               {"name": CHECKSUM_HEADER, "in": "header", "required": False,
                                "description": "`<algorithm> <base64 digest>` of the body "
                                               "(as tus's Upload-Checksum); when given, the "
                                               "body is checked against it instead of "
                                               "against the leaf hash (400 "
                                               "`chunk_checksum_mismatch`)",
                                "schema": {"type": "string", "pattern": CHECKSUM_PATTERN}},
                               {"name": LEASE_TOKEN_HEADER, "in": "header", "required": False,
                                "description": "the writer lease's fencing token; "
                                               "409 `lease_lost` if stale",
                                "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,14}$"}}]})
async def put_chunk(session_id: SessionId, index: ChunkIndex, request: Request,
                    service: Service) -> PutChunkOut:
    """Stream the body to a staged file, checking it; return its sealed length.

    The body is checked against `Upload-Checksum` when the caller sends one (the processor
    sends crc32c), else against `X-Lucid-Leaf-Hash` (400 `chunk_checksum_mismatch` or
    `leaf_hash_mismatch`; nothing is stored).  The leaf hash is recorded as stated.

    409 `lease_lost` if `X-Lucid-Lease-Token` is not the session's current lease token
    (or is absent while a lease is held); checked before and right before publishing.
    """
    _require_octet_stream(request)
    leaf = _leaf_hash_header(request)
    length = _content_length(request, service.max_chunk_bytes)
    raw_checksum = request.headers.get(CHECKSUM_HEADER)
    checksum = None if raw_checksum is None else Checksum.parse(raw_checksum)
    sealed = await service.put_chunk(session_id, index, request_body(request), leaf_hash=leaf,
                                     content_length=length, checksum=checksum,
                                     lease_token=_lease_token_header(request))
    return PutChunkOut(index=index, sealed_length=sealed)


@router.post("/sessions/{session_id}/commit", summary="Make staged chunks visible, atomically",
             responses=error_responses(404, 409, 413))
async def commit(session_id: SessionId, body: CommitIn, service: Service) -> CommitOut:
    """Return the new offset and chunk count; 409 `offset_mismatch` carries the actual offset,
    413 `payload_too_large` a commit past the declared `upload_length`, 409 `lease_lost` a
    `lease_token` that is not the session's current lease (nothing of it becomes visible)."""
    rec = await service.commit(session_id, expected_offset=body.expected_offset,
                               chunks=chunk_records(body.chunks), lease_token=body.lease_token)
    return CommitOut(offset=rec.offset, chunk_count=rec.chunk_count)


@router.get("/sessions/{session_id}/chunks", summary="Committed chunk records, by index",
            responses=error_responses(404, 409))
async def list_chunks(session_id: SessionId, meta: Meta,
                      start: Annotated[int, Query(ge=0, le=MAX_CHUNK_INDEX)] = 0,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> ChunkList:
    records = await meta.list_chunks(session_id, start=start, limit=limit)
    return ChunkList(items=[ChunkModel.of(r) for r in records])


@router.get("/sessions/{session_id}/leaves", summary="Committed leaf hashes, 32 bytes each",
            response_class=Response, responses={200: _BINARY, **error_responses(404, 409)})
async def leaves(session_id: SessionId, meta: Meta,
                 size: Annotated[int | None, Query(ge=0, le=MAX_TREE_SIZE)] = None) -> Response:
    """Return the first `size` (default: all) leaf hashes; size <= chunk_count."""
    return Response(await meta.leaf_hashes(session_id, size=size), media_type=OCTET_STREAM)


@router.get("/sessions/{session_id}/chunks/{index}", summary="A committed chunk's sealed bytes",
            response_class=Response, responses={
                200: {**_BINARY, "description": "the whole sealed chunk"},
                206: {**_BINARY, "description": "the one range asked for",
                      "headers": {"Content-Range": {
                          "description": "`bytes first-last/size` (RFC 9110 §14.4)",
                          "schema": {"type": "string"}}}},
                **error_responses(400, 404, 409, 416, 502)})
async def get_chunk(session_id: SessionId, index: ChunkIndex, service: Service,
                    byte_range: Annotated[str | None, Header(
                        alias="Range", description=RANGE_DOC,
                        json_schema_extra={"pattern": RANGE_PATTERN})] = None) -> Response:
    """Return the bytes as stored, or the one range of them asked for (206).

    404 `chunk_not_found` (`"missing": true` if file lost); 400 `invalid_range` for a
    Range that is not one `bytes` range-spec; 416 `range_not_satisfiable` (with
    `size`, and `Content-Range: bytes */size`) for one that selects none of the bytes.
    A sealed chunk is authenticated only whole: a range is for resuming a read that
    broke off, and its reader checks the chunk once it holds all of it.  Streamed
    from the file (or object) as sent, so storage holds a piece per reader, not a chunk.
    """
    if byte_range is None:
        size, pieces = await service.stream_chunk(session_id, index)
        return StreamingResponse(pieces, media_type=OCTET_STREAM, headers={
            "Content-Length": str(size), "Accept-Ranges": "bytes"})
    size, rng, pieces = await service.stream_chunk_range(session_id, index, byte_range)
    return StreamingResponse(pieces, status_code=206, media_type=OCTET_STREAM, headers={
        "Content-Length": str(rng.end - rng.start), "Accept-Ranges": "bytes",
        "Content-Range": f"bytes {rng.start}-{rng.end - 1}/{size}"})


@router.delete("/sessions/{session_id}/staged",
               summary="Discard staged chunks that were never committed",
               responses=error_responses(404, 409))
async def discard_staged(session_id: SessionId, service: Service,
                         lease_token: Annotated[int | None,
                                                Query(ge=1, le=MAX_LEASE_TOKEN)] = None
                         ) -> DiscardOut:
    """Remove every staged, uncommitted chunk file and fence off PUTs in flight.

    A PUT of this session that started before the discard fails with 409
    `staging_discarded` instead of publishing its file.  409 `lease_lost` (nothing
    removed) unless `lease_token` is the session's current lease token (or, absent, while
    no writer holds the lease).
    """
    return DiscardOut(discarded=await service.discard_staged(session_id, lease_token))


def _require_octet_stream(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != OCTET_STREAM:
        raise UnsupportedMediaType(f"a chunk is sent as {OCTET_STREAM}")


def _lease_token_header(request: Request) -> int | None:
    raw = request.headers.get(LEASE_TOKEN_HEADER)
    if raw is None:
        return None
    if _DIGITS.fullmatch(raw) is None or not 1 <= int(raw) <= MAX_LEASE_TOKEN:
        raise BadRequest(f"{LEASE_TOKEN_HEADER} must be a positive decimal integer")
    return int(raw)


def _leaf_hash_header(request: Request) -> bytes:
    value = request.headers.get(LEAF_HASH_HEADER, "")
    if _HEX64.fullmatch(value) is None:
        raise BadRequest(f"{LEAF_HASH_HEADER} must be 64 hex digits")
    return bytes.fromhex(value)


def _content_length(request: Request, max_bytes: int) -> int | None:
    """Return the declared body length, refusing one past max_bytes before reading any body."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if _DIGITS.fullmatch(raw) is None:
        raise BadRequest("Content-Length must be a decimal integer")
    if int(raw) > max_bytes:
        raise PayloadTooLarge(f"a sealed chunk is at most {max_bytes} bytes")
    return int(raw)

