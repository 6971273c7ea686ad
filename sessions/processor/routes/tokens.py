"""API tokens, relayed to storage as they are: the gateway hashes, storage keeps them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from sessions.common.errors import error_responses
from sessions.common.tokens import TOKEN_ID
from sessions.contract.models import NewToken, StoredToken, StoredTokenList
from sessions.processor.deps import EngineDep

router = APIRouter(prefix="/internal/v1/tokens", tags=["tokens"])
TokenId = Annotated[str, Path(pattern=TOKEN_ID, description="16 hex digits")]


@router.post("", status_code=201, responses=error_responses(409))
async def create_token(body: NewToken, engine: EngineDep) -> StoredToken:
    return await engine.store_token(body)


@router.get("")
async def list_tokens(engine: EngineDep) -> StoredTokenList:
    return await engine.stored_tokens()


@router.get("/{token_id}", responses=error_responses(404))
async def get_token(token_id: TokenId, engine: EngineDep) -> StoredToken:
    return await engine.stored_token(token_id)


@router.post("/{token_id}/revoke", responses=error_responses(404))
async def revoke_token(token_id: TokenId, engine: EngineDep) -> StoredToken:
    return await engine.revoke_token(token_id)
