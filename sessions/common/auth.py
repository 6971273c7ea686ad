"""Bearer-token checks in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sessions.common.errors import Unauthorized


def bearer_token(conn: HTTPConnection) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def tokens_equal(presented: str, expected: str) -> bool:
    """Compare two tokens without leaking where they differ."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def require_token(conn: HTTPConnection, expected: str) -> None:
    """Raise Unauthorized unless the request carries exactly the expected bearer token."""
    presented = bearer_token(conn)
    if presented is None or not tokens_equal(presented, expected):
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})


OPEN_PATHS = frozenset({"/health", "/ready"})
"""What an internal service answers without its service token: liveness and readiness only."""


class ServiceTokenGate:
    """Refuses every request but `/health` and `/ready` without the service token.

    The one token check of the internal services (`sessions.common.app.build_app`).  It
    runs before routing, so the OpenAPI document, `/docs`, `/redoc`, their assets,
    `/metrics`, every route and unknown paths all need the token, and no body byte is
    read from a caller the service does not trust.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            try:
                require_token(HTTPConnection(scope), self.token)
            except Unauthorized as err:
                response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
