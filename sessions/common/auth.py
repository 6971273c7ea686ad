"""Bearer-token checks in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

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
