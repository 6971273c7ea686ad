"""Who acts, for the audit log: the gateway tells the processor on every call it makes.

`ActorScope` (a pure ASGI middleware) keeps the request's ASGI scope in a context
variable for the length of the request.  `actor_headers()` reads from it, at the
moment the processor client sends, the principal `authenticate` left on
`request.state` and the client's address, as `X-Lucid-Actor` (the token id, never
the token) and `X-Lucid-Client`.  The processor trusts them because only holders of
the service token reach it; it records the audit entry once the action succeeded.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

ACTOR_HEADER = "X-Lucid-Actor"
CLIENT_HEADER = "X-Lucid-Client"
_SCOPE: ContextVar[Scope | None] = ContextVar("lucid_request_scope", default=None)


class ActorScope:
    """Make the current request's scope visible to the processor client (ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _SCOPE.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            _SCOPE.reset(token)


def actor_headers() -> dict[str, str]:
    """Return the actor headers of the current request ({} outside one, or before auth)."""
    scope = _SCOPE.get()
    if scope is None:
        return {}
    principal: Any = scope.get("state", {}).get("principal")
    client = scope.get("client")
    headers = {CLIENT_HEADER: str(client[0])} if client else {}
    if principal is not None:
        headers[ACTOR_HEADER] = str(principal.token_id)
    return headers
