"""tus 1.0.0 on the session URLs: discovery (`OPTIONS`) and the routes `TusDispatch` sends to.

Each handler checks the tus headers (`sessions.api.tus`), makes the same processor
calls as the JSON API, and answers as tus says (201 + `Location`, 204 +
`Upload-Offset`, ...).  Errors keep Lucid's `{"error", "detail"}` body.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request, Response

from sessions.api import tus
from sessions.api.config import Settings
from sessions.api.deps import (
    Client,
    MetricsDep,
    Processor,
    SessionId,
    SettingsDep,
    authenticate,
)
from sessions.api.streams import limited_body
from sessions.common.errors import (
    InvalidState,
    PayloadTooLarge,
    ServiceError,
    UpstreamUnavailable,
)
from sessions.common.states import SessionState
from sessions.contract.models import OwnedCreateSession, Session

router = APIRouter(tags=["upload"])
hidden = APIRouter(prefix=tus.TUS_PREFIX + "/v1/sessions", include_in_schema=False,
                   dependencies=[Depends(authenticate)])

_DISCOVERY = """tus 1.0.0 discovery: `Tus-Version`, `Tus-Extension`, `Tus-Max-Size`,
`Tus-Checksum-Algorithm`, and `Lucid-Chunk-Size` (use it as the client's chunk size: the
tail of every request becomes a short chunk). Needs no token; with `LUCID_CORS_ORIGINS`
set, a CORS preflight is answered here too.

**tus on the session URLs.** A request carrying `Tus-Resumable: 1.0.0` gets tus
semantics: `POST /v1/sessions` with `Upload-Length` or `Upload-Defer-Length: 1` (and
`Upload-Metadata`, mapped to labels) answers 201 with `Location: /v1/sessions/{id}/upload`;
`HEAD` on it gives `Upload-Offset`, `Upload-Length` or `Upload-Defer-Length`;
`PATCH` answers 204 with the new `Upload-Offset`; `DELETE` crypto-erases (204).
Reaching `Upload-Length` finalizes the session. Errors keep the `{"error", "detail"}`
body: 412 `tus_version_unsupported` (another `Tus-Resumable`), 410 `session_deleted`,
413 `payload_too_large` (past `Upload-Length` or `Tus-Max-Size`), 460
`checksum_mismatch`, 409 `offset_mismatch`, 415. See docs/tus.md."""


async def _discovery(settings: SettingsDep, processor: Processor) -> Response:
    try:
        chunk_size = (await processor.node()).chunk_size
    except ServiceError:
        chunk_size = None  # discovery still answers while the processor is away
    headers = tus.discovery_headers(max_size=settings.max_session_bytes,
                                    chunk_size=chunk_size)
    return Response(status_code=204, headers=headers)


router.add_api_route("/v1/sessions", _discovery, methods=["OPTIONS"], status_code=204,
                     response_class=Response, summary="tus discovery", description=_DISCOVERY,
                     responses={204: {"description": "tus headers only"}})


async def _upload_discovery(session_id: SessionId, settings: SettingsDep,  # noqa: ARG001
                            processor: Processor) -> Response:
    """Return the discovery headers on an upload URL (its id is checked, not looked up)."""
    return await _discovery(settings, processor)


router.add_api_route("/v1/sessions/{session_id}/upload", _upload_discovery, methods=["OPTIONS"],
                     status_code=204, response_class=Response, summary="tus discovery",
                     description=_DISCOVERY, responses={204: {"description": "tus headers only"}})


def _now() -> datetime:
    return datetime.now(UTC)


def _expiry(settings: Settings, last: datetime) -> dict[str, str]:
    value = tus.expires(last, settings.idle_deadline)
    return {} if value is None else {"Upload-Expires": value}


def _location(session_id: str) -> str:
    return f"/v1/sessions/{session_id}/upload"


def _forwarded(request: Request, settings: Settings,
               offset_header: str | None) -> tuple[dict[str, str], int]:
    """Return the checked headers of a request with data, and the most bytes it may carry.

    A request carries at most LUCID_MAX_UPLOAD_BYTES and never takes the session past
    LUCID_MAX_SESSION_BYTES (Tus-Max-Size).
    """
    start = tus.decimal(offset_header, "Upload-Offset") or 0
    room = max(0, min(settings.max_upload_bytes, settings.max_session_bytes - start))
    return tus.patch_headers(request.headers, room=room, offset=offset_header), room


async def _append(request: Request, processor: Processor, metrics: MetricsDep,
                  session_id: str, headers: dict[str, str], room: int) -> str:
    """Stream the request body at its Upload-Offset; return the new offset."""
    counter = metrics.bytes_in.labels(metrics.service, "upload")
    body = limited_body(request, limit=room, count=counter.inc,
                        stall_timeout=request.app.state.settings.body_read_timeout)
    try:
        result, new_offset = await processor.upload(session_id, body, headers)
    except InvalidState as exc:
        if exc.extra.get("state") == "deleted":
            raise tus.Gone() from None  # tus termination: the URL is gone for good
        raise
    return new_offset if new_offset is not None else str(result.offset)


@hidden.post("", status_code=201, response_class=Response)
async def create(request: Request, processor: Processor, settings: SettingsDep,
                 metrics: MetricsDep, client: Client) -> Response:
    """tus creation (and creation-with-upload, creation-defer-length): 201 + Location."""
    length = tus.creation_length(request.headers, max_size=settings.max_session_bytes)
    labels = tus.metadata_labels(request.headers.get("upload-metadata"))
    data = None
    if request.headers.get("content-type") is not None and request.headers.get(
            "content-length") != "0":  # creation-with-upload; an empty body is no data
        data = _forwarded(request, settings, "0")
    created = await processor.create_session(OwnedCreateSession(
        labels=labels, retention_days=None, upload_length=length, owner=client.token_id))
    session_id = created.id
    headers = {"Location": _location(session_id), **_expiry(settings, _now())}
    if data is not None:
        headers["Upload-Offset"] = await _first_bytes(request, processor, metrics, session_id,
                                                      *data)
    return Response(status_code=201, headers=headers)


async def _first_bytes(request: Request, processor: Processor, metrics: MetricsDep,
                       session_id: str, headers: dict[str, str], room: int) -> str:
    """Return the offset after storing a creation request's body (creation-with-upload).

    The session exists whatever happens to its first bytes, so a failed body still
    answers 201 with the offset committed, and the client resumes with PATCH.
    """
    try:
        return await _append(request, processor, metrics, session_id, headers, room)
    except ServiceError as exc:
        if isinstance(exc, UpstreamUnavailable):
            raise
        return str((await processor.get_session(session_id)).offset)


@hidden.head("/{session_id}/upload", response_class=Response)
async def offset(session_id: SessionId, processor: Processor, settings: SettingsDep) -> Response:
    """tus HEAD: Upload-Offset, Upload-Length or Upload-Defer-Length, metadata, expiry."""
    session = await processor.get_session(session_id)
    if session.state == SessionState.DELETED:
        raise tus.Gone()
    if (session.state in (SessionState.RECORDING, SessionState.FINALIZING)
            and session.upload_length == session.offset):
        session = await processor.finalize(session_id)  # completes a finalize that was cut off
    return Response(status_code=200, headers=_head_headers(session, settings))


def _head_headers(session: Session, settings: Settings) -> dict[str, str]:
    """Return a tus HEAD's headers; a completed session's length is its offset."""
    headers = {"Upload-Offset": str(session.offset), "Cache-Control": "no-store",
               tus.CHUNK_SIZE_HEADER: str(session.chunk_size)}
    length = session.upload_length
    if length is None and session.state == SessionState.COMPLETED:
        length = session.offset  # finalized through the JSON API: nothing more can come
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    meta = tus.metadata_header(session.labels)
    if meta is not None:
        headers["Upload-Metadata"] = meta
    if session.state == SessionState.RECORDING:
        last = datetime.fromisoformat(session.updated_at.replace("Z", "+00:00"))
        headers |= _expiry(settings, last)
    return headers


@hidden.patch("/{session_id}/upload", status_code=204, response_class=Response)
async def append(session_id: SessionId, request: Request, processor: Processor,
                 settings: SettingsDep, metrics: MetricsDep) -> Response:
    """tus PATCH: 204 + the new Upload-Offset; a deferred length may be declared once here.

    When the offset reaches the declared length the processor finalizes the session.
    """
    headers, room = _forwarded(request, settings, request.headers.get("upload-offset"))
    length = tus.decimal(request.headers.get("upload-length"), "Upload-Length")
    if length is not None:
        if length > settings.max_session_bytes:
            raise PayloadTooLarge("Upload-Length exceeds Tus-Max-Size")
        await processor.set_upload_length(session_id, length)
    new_offset = await _append(request, processor, metrics, session_id, headers, room)
    return Response(status_code=204,
                    headers={"Upload-Offset": new_offset, **_expiry(settings, _now())})


@hidden.delete("/{session_id}/upload", status_code=204, response_class=Response)
async def terminate(session_id: SessionId, processor: Processor) -> Response:
    """tus termination: crypto-erase as `DELETE /v1/sessions/{id}` does; 204."""
    await processor.delete_session(session_id)
    return Response(status_code=204)

