"""The tus 1.0.0 resumable-upload protocol on the gateway: its headers, rules and dispatch.

https://tus.io/protocols/resumable-upload (core, creation, creation-defer-length,
creation-with-upload, checksum, termination, expiration).  A request carrying
`Tus-Resumable` gets tus semantics on the session URLs (`POST /v1/sessions`,
`HEAD`/`PATCH`/`DELETE /v1/sessions/{id}/upload`); `TusDispatch` sends it to the
hidden routes under `TUS_PREFIX` (`sessions/api/routes/tus.py`).  A request
without the header never reaches them: the JSON API is unchanged.  What stays
Lucid's own: bearer authentication, the `{"error", "detail"}` body of a 4xx, and
the rule that a request's tail becomes a short chunk (`Lucid-Chunk-Size`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from datetime import datetime, timedelta
from email.utils import format_datetime

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessions.common import checksums
from sessions.common.checksums import Checksum
from sessions.common.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from sessions.common.models import LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS

VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-defer-length", "creation-with-upload", "checksum",
              "termination", "expiration")
OFFSET_STREAM = "application/offset+octet-stream"
TUS_PREFIX = "/_tus"
CHUNK_SIZE_HEADER = "Lucid-Chunk-Size"

REQUEST_HEADERS = ("Authorization", "Content-Type", "Tus-Resumable", "Upload-Offset",
                   "Upload-Length", "Upload-Defer-Length", "Upload-Metadata", "Upload-Checksum",
                   "Upload-Concat", "X-HTTP-Method-Override", "X-Requested-With")
RESPONSE_HEADERS = ("Location", "Upload-Offset", "Upload-Length", "Upload-Defer-Length",
                    "Upload-Metadata", "Upload-Expires", "Tus-Resumable", "Tus-Version",
                    "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm", CHUNK_SIZE_HEADER)
METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS")

_DECIMAL = re.compile(r"[0-9]{1,19}")
_LABEL_KEY = re.compile(LABEL_KEY)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CONTROL = frozenset({"Cc", "Cf"})
_CREATE = re.compile(r"^/v1/sessions$")
_UPLOAD = re.compile(r"^/v1/sessions/[^/]+/upload$")
_TUS_METHODS = {"POST": _CREATE, "HEAD": _UPLOAD, "PATCH": _UPLOAD, "DELETE": _UPLOAD}


class UnsupportedVersion(ServiceError):
    status, code = 412, "tus_version_unsupported"
    detail = f"this server speaks tus {VERSION} only (see Tus-Version)"


class Gone(ServiceError):
    status, code, detail = 410, "session_deleted", "the session was deleted (crypto-erased)"


# -- header rules ------------------------------------------------------------------------------


def decimal(value: str | None, name: str) -> int | None:
    """Return a header's non-negative integer, None if absent; BadRequest if malformed."""
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value.strip()):
        raise BadRequest(f"{name} must be a non-negative decimal integer")
    return int(value.strip())


def creation_length(headers: Headers, *, max_size: int) -> int | None:
    """Return the declared `Upload-Length`, or None for `Upload-Defer-Length: 1`.

    Preconditions (tus creation): exactly one of the two headers; Upload-Defer-Length
    is `1`; Upload-Length <= max_size (else 413).
    """
    length = decimal(headers.get("upload-length"), "Upload-Length")
    defer = headers.get("upload-defer-length")
    if defer is not None and defer.strip() != "1":
        raise BadRequest("Upload-Defer-Length must be 1")
    if (length is None) == (defer is None):
        raise BadRequest("send either Upload-Length or Upload-Defer-Length: 1")
    if length is not None and length > max_size:
        raise PayloadTooLarge(f"an upload may have at most {max_size} bytes (Tus-Max-Size)")
    return length


def label_key(key: str) -> str:
    """Return the label key a tus metadata key maps to: itself, or its snake_case form.

    `relativePath` -> `relative_path`, `filetype` -> `filetype`; BadRequest if neither
    form is a label key (`^[a-z0-9][a-z0-9_.-]{0,63}$`).
    """
    if _LABEL_KEY.fullmatch(key):
        return key
    snake = _CAMEL.sub("_", key).lower()
    if not _LABEL_KEY.fullmatch(snake):
        raise BadRequest(f"Upload-Metadata key {key[:64]!r} cannot be a label: keys are "
                         f"letters, digits, '_', '.', '-' (at most 64)")
    return snake


def metadata_labels(value: str | None) -> dict[str, str]:
    """Return the labels an `Upload-Metadata` header maps to (tus creation).

    Each pair `key base64(value)` becomes label `label_key(key)` = the UTF-8 value;
    a key without a value becomes an empty label.  Refused (400): a malformed pair,
    a repeated key, a value that is not base64 of UTF-8 or is longer than 256
    characters or holds control characters, more than 32 pairs.
    """
    labels: dict[str, str] = {}
    if value is None or not value.strip():
        return labels
    for pair in value.split(","):
        key, _, encoded = pair.strip().partition(" ")
        if not key:
            raise BadRequest("Upload-Metadata is 'key base64,key base64,...'")
        name = label_key(key)
        if name in labels:
            raise BadRequest(f"Upload-Metadata key {key[:64]!r} is repeated")
        labels[name] = _metadata_value(key, encoded.strip())
    if len(labels) > MAX_LABELS:
        raise BadRequest(f"Upload-Metadata may carry at most {MAX_LABELS} pairs")
    return labels


def _metadata_value(key: str, encoded: str) -> str:
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadRequest(f"Upload-Metadata {key[:64]!r}: the value must be base64 of "
                         "UTF-8 text") from None
    if len(text) > MAX_LABEL_VALUE or any(unicodedata.category(c) in _CONTROL for c in text):
        raise BadRequest(f"Upload-Metadata {key[:64]!r}: the value must be at most "
                         f"{MAX_LABEL_VALUE} characters, none of them control characters")
    return text


def metadata_header(labels: dict[str, str]) -> str | None:
    """Return the `Upload-Metadata` value of a session's labels (None if it has none)."""
    pairs = [f"{k} {base64.b64encode(v.encode('utf-8')).decode('ascii')}" if v else k
             for k, v in sorted(labels.items())]
    return ",".join(pairs) or None


def patch_headers(headers: Headers, *, room: int, offset: str | None) -> dict[str, str]:
    """Return the headers to forward for a tus PATCH (or a POST with data).

    Preconditions: Content-Type is exactly application/offset+octet-stream (415);
    the offset (the request's Upload-Offset; 0 on creation) is present (400);
    0 <= Content-Length <= room (413).
    """
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != OFFSET_STREAM:
        raise UnsupportedMediaType(f"a tus PATCH carries Content-Type: {OFFSET_STREAM}")
    start = decimal(offset, "Upload-Offset")
    if start is None:
        raise BadRequest("Upload-Offset is required")
    out = {"Upload-Offset": str(start), "Content-Type": OFFSET_STREAM}
    length = decimal(headers.get("content-length"), "Content-Length")
    if length is not None:
        if length > room:
            raise PayloadTooLarge(f"this request may carry at most {room} bytes")
        out["Content-Length"] = str(length)
    if (digest := headers.get("upload-checksum")) is not None:
        out["Upload-Checksum"] = Checksum.parse(digest).header
    return out


def expires(last_activity: datetime, idle_deadline: int) -> str | None:
    """Return the `Upload-Expires` date (RFC 9110 IMF-fixdate), None if nothing expires."""
    if idle_deadline <= 0:
        return None
    return format_datetime(last_activity + timedelta(seconds=idle_deadline), usegmt=True)


def discovery_headers(*, max_size: int, chunk_size: int | None) -> dict[str, str]:
    """Return the headers of an `OPTIONS` answer (tus core and checksum)."""
    headers = {"Tus-Resumable": VERSION, "Tus-Version": VERSION,
               "Tus-Extension": ",".join(EXTENSIONS), "Tus-Max-Size": str(max_size),
               "Tus-Checksum-Algorithm": ",".join(checksums.ALGORITHMS)}
    if chunk_size is not None:
        headers[CHUNK_SIZE_HEADER] = str(chunk_size)
    return headers


# -- dispatch ----------------------------------------------------------------------------------


def tus_target(method: str, path: str) -> bool:
    """Return whether a tus request of this method and path has a tus-only route."""
    pattern = _TUS_METHODS.get(method)
    return pattern is not None and pattern.match(path) is not None


def _is_tus_path(path: str) -> bool:
    return _CREATE.match(path) is not None or _UPLOAD.match(path) is not None


class TusDispatch:
    """ASGI middleware: gives requests with `Tus-Resumable` their tus semantics.

    * the version is checked first: another one is refused with 412 and `Tus-Version`,
      and the request is not processed;
    * `X-HTTP-Method-Override` is the method of a tus request;
    * `POST /v1/sessions` and `HEAD`/`PATCH`/`DELETE .../upload` go to the routes
      under TUS_PREFIX;
    * every answer to a tus request, and to `OPTIONS` on a tus URL, carries
      `Tus-Resumable`.
    Requests without the header pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(TUS_PREFIX):  # reached only through the dispatch below
            await _refuse(send, NotFound())
            return
        headers = Headers(scope=scope)
        version = headers.get("tus-resumable")
        if scope["method"] == "OPTIONS":
            tagged = _is_tus_path(scope["path"])
        elif version is None:
            await self.app(scope, receive, send)
            return
        else:
            if version.strip() != VERSION:
                await _refuse(send, UnsupportedVersion())
                return
            tagged = True
            scope = _routed(scope, headers.get("x-http-method-override"))

        async def tag(message: Message) -> None:
            if message["type"] == "http.response.start" and tagged:
                MutableHeaders(scope=message)["Tus-Resumable"] = VERSION
            await send(message)

        await self.app(scope, receive, tag)


def _routed(scope: Scope, override: str | None) -> Scope:
    method = override.strip().upper() if override else scope["method"]
    if not tus_target(method, scope["path"]):
        return scope if method == scope["method"] else {**scope, "method": method}
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    return {**scope, "method": method, "path": TUS_PREFIX + scope["path"],
            "raw_path": TUS_PREFIX.encode("ascii") + raw}


async def _refuse(send: Send, err: ServiceError) -> None:
    body = json.dumps(err.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if isinstance(err, UnsupportedVersion):
        headers += [(b"tus-resumable", VERSION.encode()), (b"tus-version", VERSION.encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_tus(app: Starlette, origins: list[str]) -> None:
    """Add tus dispatch, then CORS outside it when origins are configured (off by default).

    A CORS preflight is answered by CORSMiddleware; any other OPTIONS reaches tus discovery.
    """
    app.add_middleware(TusDispatch)
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=list(METHODS),
                           allow_headers=list(REQUEST_HEADERS),
                           expose_headers=list(RESPONSE_HEADERS), max_age=600)
