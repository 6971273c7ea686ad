"""Shared pieces of the gateway tests: tokens, a fake processor, small helpers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sessions.common.states import SessionState
from sessions.contract.models import Session

ADMIN_TOKEN = "admin-" + "a1" * 20
SERVICE_TOKEN = "service-" + "s2" * 20
SESSION_ID = "01JDZ0Q3W6Y8E2V7K4N5P9R1ST"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def session(**overrides: Any) -> Session:
    """Return a recording session as the processor answers it (`overrides` validated)."""
    built = Session(id=SESSION_ID, state=SessionState.RECORDING, labels={},
                    created_at="2025-11-27T12:00:00Z", updated_at="2025-11-27T12:00:00Z",
                    retention_days=None, offset=0, chunk_count=0, sealed_bytes=0,
                    chunk_size=1048576, zstd_level=3, format_version=1, root_hash=None,
                    integrity="ok", upload_length=None, owner=None, legal_hold=False,
                    expires_at=None)
    return Session.model_validate(built.model_dump() | overrides)


def session_json(**extra: Any) -> dict[str, Any]:
    """Return a processor-side Session body; keys `Session` lacks (a wrapped key, say) are
    kept in the body, so a test can check that the gateway never shows them."""
    fields = {k: v for k, v in extra.items() if k in Session.model_fields}
    return session(**fields).model_dump(mode="json") | {
        k: v for k, v in extra.items() if k not in Session.model_fields}


@dataclass
class FakeProcessor(httpx.AsyncBaseTransport):
    """A processor stand-in: routes (method, path) to handlers, records what the gateway sent.

    Like httpx.MockTransport, except that it reads the request body piece by piece
    (MockTransport reads it whole first), so tests can see that the gateway streams.
    """

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    bodies: list[list[bytes]] = field(default_factory=list)

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def reply(self, method: str, path: str, status: int = 200, body: Any = None,
              headers: dict[str, str] | None = None) -> None:
        async def handler(_: httpx.Request) -> httpx.Response:
            return httpx.Response(status, json=body, headers=headers)
        self.on(method, path, handler)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pieces = [piece async for piece in request.stream]  # type: ignore[union-attr]
        self.requests.append(request)
        self.bodies.append(pieces)
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return httpx.Response(404, json={"error": "not_found", "detail": "no such route"})
        return await handler(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_body(self) -> bytes:
        return b"".join(self.bodies[-1])


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}", **extra}


def error_of(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) >= {"error", "detail"}
    assert "Traceback" not in json.dumps(body)
    return str(body["error"])
