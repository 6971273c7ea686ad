"""`/v1/tokens`: API tokens with roles; create (the token is shown once), list, revoke. Admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from sessions.api.deps import Client, Processor, authenticate, resources
from sessions.api.models import errors
from sessions.common.tokens import (
    TOKEN_ID,
    CreatedToken,
    CreateToken,
    NewToken,
    TokenInfo,
    TokenList,
    new_token,
)

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], dependencies=[Depends(authenticate)],
                   responses=errors(401, 503))
TokenId = Annotated[str, Path(pattern=TOKEN_ID, description="16 hex digits",
                              examples=["0123456789abcdef"])]


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.post("", status_code=201, response_model=CreatedToken, responses=errors(422),
             summary="Create a token (shown once)")
async def create_token(body: CreateToken, processor: Processor, client: Client) -> CreatedToken:
    """Return the new token `lucid_<id>_<secret>` once; only the SHA-256 of its secret is kept."""
    token, token_id, digest = new_token()
    expires = (None if body.expires_in is None
               else _rfc3339(datetime.now(UTC) + timedelta(seconds=body.expires_in)))
    stored = await processor.create_token(NewToken(
        id=token_id, name=body.name, role=body.role, secret_hash=digest.hex(),
        expires_at=expires, created_by=client.token_id))
    return CreatedToken(**TokenInfo.model_validate(stored.model_dump()).model_dump(), token=token)


@router.get("", response_model=TokenList, summary="List tokens (never their secrets)")
async def list_tokens(processor: Processor) -> TokenList:
    stored = await processor.list_tokens()
    return TokenList(items=[TokenInfo.model_validate(t.model_dump()) for t in stored.items])


@router.delete("/{token_id}", status_code=204, response_class=Response,
               responses=errors(404, 422), summary="Revoke a token")
async def revoke_token(token_id: TokenId, processor: Processor, request: Request) -> Response:
    """Revoke the token: refused at once by this gateway, by every gateway within
    `LUCID_TOKEN_CACHE_SECONDS`.  Idempotent; the record is kept (revoked_at)."""
    await processor.revoke_token(token_id)
    resources(request).verifier.forget(token_id)
    return Response(status_code=204)
