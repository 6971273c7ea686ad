"""Request-size and header checks that run before anything is forwarded upstream."""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessions.common.checksums import Checksum
from sessions.common.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

UPLOAD_MEDIA_TYPES = frozenset({"application/offset+octet-stream", "application/octet-stream"})
_DECIMAL = re.compile(r"[0-9]{1,19}")


class JsonBodyLimit:
    """ASGI middleware: request bodies (except exempt ones) may carry at most `limit` bytes.

    The excess raises Starlette's HTTPException(413) from `receive`, which FastAPI
    re-raises while reading a body, so the app's one error mapping renders it.
    """

    def __init__(self, app: ASGIApp, *, limit: int, exempt: Callable[[Scope], bool]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.limit:
                raise HTTPException(413)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def check_upload_headers(*, offset: str | None, content_type: str | None,
                         content_length: str | None, checksum: str | None,
                         max_bytes: int) -> dict[str, str]:
    """Return the headers to forward for one upload PATCH; raise the 4xx it deserves.

    Requires: Upload-Offset a decimal ≥ 0; Content-Type one of UPLOAD_MEDIA_TYPES;
    0 ≤ Content-Length ≤ max_bytes when present; Upload-Checksum, when present,
    `<algorithm> <base64 digest>` (sessions/common/checksums.py).
    """
    if offset is None or not _DECIMAL.fullmatch(offset):
        raise BadRequest("Upload-Offset must be present and a non-negative decimal integer")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in UPLOAD_MEDIA_TYPES:
        raise UnsupportedMediaType("Content-Type must be application/offset+octet-stream "
                                   "or application/octet-stream")
    headers = {"Upload-Offset": offset, "Content-Type": media}
    if content_length is not None:
        if not _DECIMAL.fullmatch(content_length):
            raise BadRequest("Content-Length must be a non-negative decimal integer")
        if int(content_length) > max_bytes:
            raise PayloadTooLarge(f"one upload request may carry at most {max_bytes} bytes")
        headers["Content-Length"] = content_length
    if checksum is not None:
        headers["Upload-Checksum"] = Checksum.parse(checksum).header
    return headers


def session_room(offset: int, content_length: str | None, *, max_session_bytes: int) -> int:
    """Return how many bytes may follow `offset` in a session; raise PayloadTooLarge (413)
    if a declared Content-Length would take it past max_session_bytes (LUCID_MAX_SESSION_BYTES).

    The offset is the client's; the processor refuses one that is not the committed offset.
    """
    room = max(0, max_session_bytes - offset)
    if content_length is not None and int(content_length) > room:
        raise PayloadTooLarge(f"a session holds at most {max_session_bytes} bytes",
                              extra={"max_session_bytes": max_session_bytes})
    return room
