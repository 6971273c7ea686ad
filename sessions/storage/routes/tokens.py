"""API tokens: store (hashed), list, read, revoke.  Only the gateway's relay calls these."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from sessions.common.errors import error_responses
from sessions.common.tokens import TOKEN_ID, NewToken, Role, StoredToken, StoredTokenList
from sessions.storage.deps import Meta
from sessions.storage.records import TokenRecord

router = APIRouter(prefix="/internal/v1/tokens", tags=["tokens"])
TokenId = Annotated[str, Path(pattern=TOKEN_ID, description="16 hex digits")]


def _out(rec: TokenRecord) -> StoredToken:
    return StoredToken(id=rec.id, name=rec.name, role=Role(rec.role), created_at=rec.created_at,
                       expires_at=rec.expires_at, revoked_at=rec.revoked_at,
                       created_by=rec.created_by, secret_hash=rec.secret_hash.hex())


@router.post("", status_code=201, summary="Store a token (its secret's hash)",
             responses=error_responses(400, 409))
async def create_token(body: NewToken, meta: Meta) -> StoredToken:
    """Return the stored token; 409 `conflict` if its id exists."""
    rec = TokenRecord(id=body.id, name=body.name, role=body.role.value,
                      secret_hash=bytes.fromhex(body.secret_hash), created_at="",
                      expires_at=body.expires_at, created_by=body.created_by)
    return _out(await meta.create_token(rec))


@router.get("", summary="Every token, oldest first")
async def list_tokens(meta: Meta) -> StoredTokenList:
    return StoredTokenList(items=[_out(r) for r in await meta.list_tokens()])


@router.get("/{token_id}", summary="One token", responses=error_responses(404))
async def get_token(token_id: TokenId, meta: Meta) -> StoredToken:
    return _out(await meta.get_token(token_id))


@router.post("/{token_id}/revoke", summary="Revoke a token (idempotent)",
             responses=error_responses(404))
async def revoke_token(token_id: TokenId, meta: Meta) -> StoredToken:
    return _out(await meta.revoke_token(token_id))
