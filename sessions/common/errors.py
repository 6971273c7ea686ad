"""The one error hierarchy of the services, and its one HTTP mapping.

Every error a client can see is a `ServiceError` with a stable machine-readable
`code`, an HTTP `status` and a human `detail` that never carries exception text
or secret material, rendered as the wire shape `ErrorBody` (sessions/contract/models.py).
Each app registers `install_error_handlers` once; anything else that escapes becomes
a generic 500 `internal_error` with no traceback.  No pydantic here: the CLI imports
these classes (through ids and checksums) and loads no model on a replay.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the web side is imported where it is used: the CLI never loads FastAPI
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

log = logging.getLogger("lucid.errors")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return an OpenAPI `responses` entry documenting the ErrorBody of each status."""
    from sessions.contract.models import ErrorBody

    return {status: {"model": ErrorBody} for status in statuses}


class ServiceError(Exception):
    """A failure with a stable code; rendered as {"error": code, "detail": ...}."""

    status: int = 500
    code: str = "internal_error"
    detail: str = "internal error"

    def __init__(self, detail: str | None = None, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.detail)
        if detail is not None:
            self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class BadRequest(ServiceError):
    status, code, detail = 400, "bad_request", "the request is malformed"


class InvalidId(ServiceError):
    status, code, detail = 400, "invalid_id", "the id is malformed"


class InvalidParameter(ServiceError):
    status, code, detail = 422, "invalid_parameter", "a parameter is invalid"


class ChecksumMismatch(ServiceError):
    status, code = 460, "checksum_mismatch"
    detail = "the body does not match its Upload-Checksum; nothing was committed"


class TruncatedBody(ServiceError):
    status, code, detail = 400, "truncated_body", "the body ended before its declared length"


class Unauthorized(ServiceError):
    status, code, detail = 401, "unauthorized", "a valid bearer token is required"


class Forbidden(ServiceError):
    status, code, detail = 403, "forbidden", "this token may not do that"


class RateLimited(ServiceError):
    status, code, detail = 429, "rate_limited", "too many requests with this token; retry later"


class SessionNotFound(ServiceError):
    status, code, detail = 404, "session_not_found", "no such session"


class ChunkNotFound(ServiceError):
    status, code, detail = 404, "chunk_not_found", "no such chunk"


class NotFound(ServiceError):
    status, code, detail = 404, "not_found", "no such resource"


class MethodNotAllowed(ServiceError):
    status, code, detail = 405, "method_not_allowed", "method not allowed"


class OffsetMismatch(ServiceError):
    status, code = 409, "offset_mismatch"
    detail = "Upload-Offset does not match the committed offset"


class InvalidState(ServiceError):
    status, code, detail = 409, "invalid_state", "the session is not in a state that allows this"


class UploadInProgress(ServiceError):
    status, code, detail = 409, "upload_in_progress", "another writer is uploading to this session"


class LeaseLost(ServiceError):
    """A write carried a fencing token that is no longer the session's lease (another writer
    took the session over, or the lease was released); nothing of it was stored."""

    status, code = 409, "lease_lost"
    detail = "this writer's lease on the session was lost; another writer took it over"


class KeyUnavailable(ServiceError):
    status, code = 409, "key_unavailable"
    detail = "the session's key is erased or does not open under this node's master key"


class LegalHold(ServiceError):
    status, code = 409, "legal_hold"
    detail = "the session is under legal hold; release the hold before deleting it"


class RequestTimeout(ServiceError):
    status, code = 408, "request_timeout"
    detail = "the request body stalled; committed data is kept, resume from the upload offset"

    def __init__(self, detail: str | None = None, *, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, extra=extra, headers={"Connection": "close", **(headers or {})})


class InsufficientStorage(ServiceError):
    status, code = 507, "insufficient_storage"
    detail = ("the storage volume is at its free-space watermark; nothing of this chunk was "
              "written and every acknowledged byte is kept")
class KeyRotationRefused(ServiceError):
    status, code = 409, "rotation_refused"
    detail = "this key cannot be rotated through the API"


class Conflict(ServiceError):
    status, code, detail = 409, "conflict", "the request conflicts with the current state"


class PayloadTooLarge(ServiceError):
    status, code, detail = 413, "payload_too_large", "the body is too large"


class UnsupportedMediaType(ServiceError):
    status, code, detail = 415, "unsupported_media_type", "wrong Content-Type"


class InvalidRange(ServiceError):
    status, code, detail = 400, "invalid_range", "the Range header is malformed"


class RangeNotSatisfiable(ServiceError):
    status, code = 416, "range_not_satisfiable"
    detail = "the requested range is outside the session"


class ChunkCorrupt(ServiceError):
    status, code = 502, "chunk_corrupt"
    detail = "a stored chunk failed verification; no bytes of it were returned"


class MetadataCorrupt(ServiceError):
    status, code = 502, "metadata_corrupt"
    detail = ("the session's stored metadata disagrees with its signed checkpoint; "
              "nothing was signed or returned from it")


class UpstreamUnavailable(ServiceError):
    status, code = 503, "upstream_unavailable"
    detail = "a dependency of this service is not answering"


class NotReady(ServiceError):
    status, code, detail = 503, "not_ready", "the service is not ready"


def _subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


# Every error class defined above, by its code (tests hold the codes unique).
_BY_CODE: dict[str, type[ServiceError]] = {cls.code: cls for cls in _subclasses(ServiceError)}


def error_from_body(status: int, body: Any) -> ServiceError:
    """Rebuild the ServiceError an upstream service rendered, so it passes through unchanged."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        cls = _BY_CODE.get(body["error"])
        detail = body.get("detail") if isinstance(body.get("detail"), str) else None
        extra = {k: v for k, v in body.items() if k not in ("error", "detail")}
        if cls is not None:
            return cls(detail, extra=extra)
        if status == 507:  # a full volume (storage_full) is the client's answer, not a 503
            err = ServiceError(detail, extra=extra)
            err.status, err.code = status, body["error"]
            return err
    if status >= 500:
        return UpstreamUnavailable()
    err = ServiceError("upstream rejected the request")
    err.status, err.code = status, "upstream_error"
    return err


def _render(err: ServiceError) -> JSONResponse:
    from fastapi.responses import JSONResponse

    headers = dict(err.headers)
    size = err.extra.get("size")
    if err.status == 416 and isinstance(size, int):  # RFC 9110 §15.5.17: say the real length
        headers.setdefault("Content-Range", f"bytes */{size}")
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Return the Allow value of request's path: every method of every route serving it.

    Starlette's own 405 names only the first route matching the path, and GET and
    DELETE of one resource are two routes (RFC 9110 §10.2.1 wants them all), so each
    method is tried against the routing table.
    """
    from starlette.routing import Match

    methods = {method for method in _METHODS for route in request.app.router.routes
               if route.matches({**request.scope, "method": method})[0] == Match.FULL}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to {"error", "detail"} responses."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def on_service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _render(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        where = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            where.append(f"{loc}: {e.get('msg', 'invalid')}")
        return _render(InvalidParameter("invalid request: " + "; ".join(where)))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        mapping = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
                   415: UnsupportedMediaType, 401: Unauthorized, 403: Forbidden}
        cls = mapping.get(exc.status_code)
        if cls is not None:
            err = cls(headers=dict(exc.headers or {}))  # keeps e.g. Allow on a 405
            if exc.status_code == 405:
                err.headers["Allow"] = _allowed_methods(request)
        elif exc.status_code >= 500:
            err = ServiceError()
        else:
            err = BadRequest()
            err.status = exc.status_code
        return _render(err)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Log the type only: exception text can carry paths, ids or bytes we must not echo.
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return _render(ServiceError())

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
