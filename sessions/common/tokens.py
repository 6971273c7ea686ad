"""API tokens: the roles, the token format, and the token shapes on the wire.

A token reads `lucid_<id>_<secret>`: `id` is 16 hex digits (looked up, logged,
shown), `secret` is 32 random bytes in url-safe base64.  Only the SHA-256 of the
secret is stored.  A plain hash is enough here (no salt, no slow KDF): the secret
has 256 bits of entropy, so neither a dictionary nor brute force over the hash
can find it; a KDF only helps low-entropy passwords.  The gateway compares hashes
in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from sessions.common.errors import InvalidId
from sessions.common.roles import Role as Role

PREFIX = "lucid_"
TOKEN_ID = r"^[0-9a-f]{16}$"  # noqa: S105 - a pattern, not a secret
BOOTSTRAP_ID = "bootstrap-admin"
"""The token id of the admin token file the first start generates (never stored)."""
SECRET_BYTES = 32
_TOKEN_ID = re.compile(TOKEN_ID)
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")
HEX32 = r"^[0-9a-f]{64}$"
RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


def check_token_id(value: str) -> str:
    """Return value if it is a token id (16 lowercase hex digits); raise InvalidId otherwise."""
    if not _TOKEN_ID.fullmatch(value):
        raise InvalidId("a token id is 16 lowercase hex digits")
    return value


def new_token() -> tuple[str, str, bytes]:
    """Return a fresh token, its id and the SHA-256 of its secret (the only part stored)."""
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    return f"{PREFIX}{token_id}_{secret}", token_id, secret_digest(secret)


def parse_token(token: str) -> tuple[str, str] | None:
    """Return (id, secret) of a `lucid_<id>_<secret>` token, None if it is not one."""
    if not token.startswith(PREFIX):
        return None
    token_id, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or not _TOKEN_ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
        return None
    return token_id, secret


def secret_digest(secret: str) -> bytes:
    """Return the SHA-256 of a token's secret: what storage keeps instead of the secret."""
    return hashlib.sha256(secret.encode("ascii")).digest()


class NewToken(BaseModel):
    """A token to store (gateway -> processor -> storage): the hash of its secret, never it."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=TOKEN_ID)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    role: Role
    secret_hash: str = Field(pattern=HEX32, description="hex SHA-256 of the token's secret")
    expires_at: str | None = Field(None, pattern=RFC3339, description="RFC 3339 UTC; the "
                                   "gateway refuses a token whose expiry it cannot read")
    created_by: str | None = Field(None, max_length=64, description="token id of the creator")

def expiry(text: str) -> datetime:
    """Return the instant of an RFC 3339 UTC timestamp (`...Z`); ValueError if it is none."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class TokenInfo(BaseModel):
    """A token as shown to admins: never its secret, nor the hash of it."""

    id: str = Field(description="16 hex digits; the `<id>` of `lucid_<id>_<secret>`")
    name: str
    role: Role
    created_at: str = Field(description="RFC 3339")
    expires_at: str | None = Field(None, description="RFC 3339; null: never expires")
    revoked_at: str | None = Field(None, description="RFC 3339; null: not revoked")
    created_by: str | None = Field(None, description="token id of the admin who created it")


class StoredToken(TokenInfo):
    """A token as storage keeps it, with the hash of its secret (internal APIs only)."""

    secret_hash: str = Field(pattern=HEX32)


class TokenList(BaseModel):
    items: list[TokenInfo]


class StoredTokenList(BaseModel):
    items: list[StoredToken]


class CreateToken(BaseModel):
    """Body of `POST /v1/tokens`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$",
                      examples=["ws-17"])
    role: Role
    expires_in: int | None = Field(None, ge=60, le=10 * 366 * 86400,
                                   description="seconds until it expires; null: never")


class CreatedToken(TokenInfo):
    """The answer to `POST /v1/tokens`: the only time the token itself is shown."""

    token: str = Field(description="`lucid_<id>_<secret>`: shown once, store it now")
