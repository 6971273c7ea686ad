"""Sans-I/O operations: each endpoint described once, as a request to build and an answer to read.

No sockets here. A client (the CLI's sync `LucidClient`, the gateway's async
`ProcessorClient`, the processor's async `StorageClient`) turns an `Operation` into
an HTTP request with its own transport, then hands the status and body back to the
operation's parser or to `decode_error`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Operation:
    """One HTTP request to build: method, path below the service's base URL, query, headers, body.

    `json` and `content` are exclusive; `content` is left to the caller's transport
    (a streamed body is never copied here).
    """

    method: str
    path: str
    params: Mapping[str, str | int | list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass(frozen=True)
class ErrorReply:
    """A decoded error answer: the stable code, the detail, and any extra fields of the body."""

    status: int
    code: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    recognised: bool = True
    """False when the body was not a `{"error", "detail"}` object (code is then `http_error`)."""


def decode_error(status: int, body: bytes) -> ErrorReply:
    """Return what an error answer says; never raise, whatever the body holds."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        detail = parsed.get("detail")
        extra = {k: v for k, v in parsed.items() if k not in ("error", "detail")}
        return ErrorReply(status, parsed["error"], detail if isinstance(detail, str) else "",
                          extra)
    return ErrorReply(status, "http_error", f"HTTP {status}", recognised=False)
