"""`Annotated` dependency aliases of the gateway: settings, processor client, auth, ids."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sessions.api import access
from sessions.api.auth import BOOTSTRAP, Bounded, Principal, RateLimiter, TokenVerifier
from sessions.api.config import Settings
from sessions.api.processor_client import ProcessorClient
from sessions.common.errors import SessionNotFound
from sessions.common.ids import SESSION_ID_DOC, check_session_id
from sessions.common.web import Metrics

ADMIN = BOOTSTRAP


@dataclass(frozen=True)
class Resources:
    """What the gateway's lifespan builds (`main.lifespan`): the processor client and the
    token verifier, rate limiter and session-owner cache on top of it."""

    processor: ProcessorClient
    verifier: TokenVerifier
    limiter: RateLimiter
    owners: Bounded[str, str]


def resources(request: Request) -> Resources:
    """Return what the app's lifespan built."""
    built: Resources = request.app.state.resources
    return built


async def get_settings(request: Request) -> Settings:
    """Return the app's settings (set by create_app; overridable in tests)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_processor(request: Request) -> ProcessorClient:
    """Return the processor client the lifespan built."""
    return resources(request).processor


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


_bearer = HTTPBearer(auto_error=False, description="an API token `lucid_<id>_<secret>` "
                     "(`lucid-sessions token create`), or the bootstrap admin token "
                     "(local default: <data_dir>/secrets/admin.token)")


async def authenticate(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the principal of the request's bearer token if its role may call the route.

    401 `unauthorized`: no, a wrong, a revoked or an expired token; 429 `rate_limited`
    past the token's rate; 403 `forbidden`: the role may not call the route
    (`sessions.api.access.RULES`); 404 `session_not_found`: a recorder's call on a
    session another token created.  The HTTPBearer dependency only documents the scheme.
    """
    built = resources(request)
    principal = await built.verifier.principal(request)
    request.state.principal = principal
    built.limiter.take(principal.token_id)
    route = request.scope.get("route")
    path = route.path if isinstance(route, APIRoute) else request.url.path
    access.authorize(principal.role, request.method, path)
    if access.owner_bound(principal.role, path):
        await _check_owner(request, principal)
    return principal


async def _check_owner(request: Request, principal: Principal) -> None:
    """Raise SessionNotFound unless the path's session was created by the principal's token.

    A session's owner never changes, so it is cached (bounded) after the first look.
    """
    sid = check_session_id(str(request.path_params.get("session_id", "")))
    owners = resources(request).owners
    owner = owners.get(sid)
    if owner is None:
        processor = resources(request).processor
        owner = (await processor.get_session(sid)).owner or ""
        owners.set(sid, owner)
    if not hmac.compare_digest(owner.encode(), principal.token_id.encode()):
        raise SessionNotFound()


async def session_id_param(
    session_id: Annotated[str, Path(description="26-character Crockford base32 session id",
                                    examples=["01JDZ0Q3W6Y8E2V7K4N5P9R1ST"],
                                    json_schema_extra=SESSION_ID_DOC)],
) -> str:
    """Return the path's session id if well-formed; raise InvalidId (400) otherwise."""
    return check_session_id(session_id)


SettingsDep = Annotated[Settings, Depends(get_settings)]
Processor = Annotated[ProcessorClient, Depends(get_processor)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
Client = Annotated[Principal, Depends(authenticate)]
SessionId = Annotated[str, Depends(session_id_param)]
