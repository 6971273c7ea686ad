"""`/v1/sessions/{id}/replay` (plaintext, ranges) and `/chunks/{index}` (sealed bytes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Header, Path, Response

from sessions.api.deps import MetricsDep, Processor, SessionId, authenticate
from sessions.api.models import errors
from sessions.api.processor_client import ProcessorClient
from sessions.api.streams import RelayResponse
from sessions.common.models import MAX_CHUNK_INDEX, RANGE_DOC

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["replay"],
                   dependencies=[Depends(authenticate)], responses=errors(400, 401, 404, 503))

_RELAYED = ("content-length", "content-range", "accept-ranges", "content-type")
_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                               "format": "binary"}}}}


def _relay(processor: ProcessorClient, upstream: httpx.Response,
           count: Callable[[float], None]) -> Response:
    headers = {name: upstream.headers[name] for name in _RELAYED if name in upstream.headers}
    if "transfer-encoding" in upstream.headers:  # framed twice: the length is not the body's
        headers.pop("content-length", None)  # (RFC 9112 6.3; h11, the fallback, accepts it)
    headers["Cache-Control"] = "no-store"
    body = processor.relay(upstream, count=count)
    return RelayResponse(body, status_code=upstream.status_code, headers=headers,
                         on_close=lambda: processor.close_stream(upstream))


@router.get("/replay", response_class=Response, summary="Replay the plaintext",
            responses={200: _BINARY, 206: {**_BINARY, "description": "the requested range"},
                       **errors(409, 416, 502)})
async def replay(session_id: SessionId, processor: Processor, metrics: MetricsDep,
                 byte_range: Annotated[str | None, Header(alias="Range",
                                                          description=RANGE_DOC)] = None,
                 ) -> Response:
    """Stream the decrypted, decompressed bytes; each chunk is verified before it is sent.

    If a chunk fails verification mid-stream the connection is cut: a client sees a
    body shorter than Content-Length, never wrong bytes.
    """
    upstream = await processor.open_replay(session_id, byte_range)
    return _relay(processor, upstream, metrics.bytes_out.labels(metrics.service, "replay").inc)


@router.get("/chunks/{index}", response_class=Response, summary="One sealed chunk, as stored",
            responses={200: _BINARY, **errors(409, 422)})
async def sealed_chunk(session_id: SessionId, processor: Processor, metrics: MetricsDep,
                       index: Annotated[int, Path(ge=0, le=MAX_CHUNK_INDEX)]) -> Response:
    """Return the sealed (encrypted) bytes of chunk `index`, for offline verification."""
    upstream = await processor.open_chunk(session_id, index)
    return _relay(processor, upstream, metrics.bytes_out.labels(metrics.service, "chunk").inc)
