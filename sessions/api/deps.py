"""`Annotated` dependency aliases of the gateway: settings, processor client, auth, ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sessions.api.config import Settings
from sessions.api.processor_client import ProcessorClient
from sessions.common.auth import require_token
from sessions.common.ids import SESSION_ID_DOC, check_session_id
from sessions.common.web import Metrics


async def get_settings(request: Request) -> Settings:
    """Return the app's settings (set by create_app; overridable in tests)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_processor(request: Request) -> ProcessorClient:
    """Return the processor client the lifespan built."""
    client: ProcessorClient = request.app.state.processor
    return client


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the id of its token (never the token) and that token's role.

    Today one bootstrap admin token holds every role; per-client tokens with narrower
    roles plug in here.  `authenticate` also leaves it on `request.state.principal`, so
    code that records who acted (logs, the audit log) reads it from one place.
    """

    token_id: str
    role: str


ADMIN = Principal("bootstrap-admin", "admin")


_bearer = HTTPBearer(auto_error=False, description="the admin token "
                     "(local default: <data_dir>/secrets/admin.token)")


async def authenticate(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the principal of the request's bearer token; raise Unauthorized (401) otherwise.

    The token is compared in constant time (`sessions.common.auth`); the HTTPBearer
    dependency only documents the scheme in the OpenAPI document.
    """
    require_token(request, request.app.state.admin_token)
    request.state.principal = ADMIN
    return ADMIN


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
