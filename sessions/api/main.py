"""The gateway app: `create_app(settings)` wires config, the processor client and the routers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI
from starlette.middleware import Middleware
from starlette.types import Scope

from sessions.api.access import document_roles
from sessions.api.actor import ActorScope
from sessions.api.auth import AccessLog, Bounded, RateLimiter, TokenVerifier
from sessions.api.config import Settings, load_settings
from sessions.api.deps import Resources, authenticate
from sessions.api.limits import JsonBodyLimit
from sessions.api.processor_client import ProcessorClient
from sessions.api.routes import (
    audit,
    node,
    replay,
    sessions,
    tokens,
    tus,
    upload_prefix,
    uploads,
)
from sessions.api.tus import TUS_PREFIX, install_tus
from sessions.common.app import build_app

DESCRIPTION = """
Keep remote-desktop session recordings safe and provable.  A recorder creates a
session, uploads its bytes with the resumable **upload protocol** (see the `upload`
operations), and finalizes it; the node seals every chunk, commits it to a Merkle
tree and signs a C2SP checkpoint.  Auditors verify offline with `GET /v1/node`, the
manifest, checkpoints, proofs and the sealed chunks.

Every `/v1` operation except `GET /v1/node` needs `Authorization: Bearer <token>`;
each names the roles it allows (recorder, viewer, auditor, admin): 403 `forbidden`
otherwise.  A recorder acts on the sessions its token created only.
Every error body is `{"error": "<stable code>", "detail": "<text>", ...}`.
"""

TAGS = [
    {"name": "sessions", "description": "Create, list, finalize, delete; manifests, "
     "checkpoints and Merkle proofs."},
    {"name": "upload", "description": "Resumable upload: send multiples of the chunk size; "
     "the tail of every request becomes a short chunk."},
    {"name": "replay", "description": "Plaintext replay with byte ranges; sealed chunks."},
    {"name": "node", "description": "The node's public verifier key."},
    {"name": "tokens", "description": "API tokens with roles (admin only)."},
    {"name": "audit", "description": "The hash-chained audit log and its signed head."},
    {"name": "health", "description": "Liveness, readiness, metrics."},
]

ROUTES = (sessions, uploads, upload_prefix, replay, node, audit, tus, tokens)
_UPLOAD_PATH = re.compile(r"^/v1/sessions/[^/]+/upload$")


def _is_upload(scope: Scope) -> bool:
    """Return whether the request is an upload PATCH, whose body is streamed, not limited."""
    if scope["path"].startswith(TUS_PREFIX):  # tus PATCH, and POST with data
        return True
    return scope["method"] == "PATCH" and _UPLOAD_PATH.match(scope["path"]) is not None


@asynccontextmanager
async def lifespan(settings: Settings, *,
                   processor_transport: httpx.AsyncBaseTransport | None = None
                   ) -> AsyncIterator[Resources]:
    """Read the tokens and open the processor client; close it on the way out."""
    uds = settings.upstream_uds
    client = ProcessorClient(settings.processor_url, settings.service_token(),
                             transport=processor_transport, kind=settings.http_transport,
                             tls=settings.upstream_tls(), uds=None if uds is None else str(uds))
    try:
        yield Resources(processor=client,
                        verifier=TokenVerifier(settings.admin_token(), client.find_token,
                                               ttl=settings.token_cache_seconds),
                        limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
                        owners=Bounded())
    finally:
        await client.aclose()


async def ready(resources: Resources) -> None:
    """Raise unless the processor answers its readiness check."""
    await resources.processor.ready()


def create_app(settings: Settings | None = None, *,
               processor_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Return the gateway app; its lifespan reads the tokens and opens the processor client."""
    settings = settings if settings is not None else load_settings()
    app = build_app(
        "api", settings, title="Lucid Sessions API", description=DESCRIPTION, tags=TAGS,
        internal=False, lifespan=lambda _: lifespan(settings,
                                                    processor_transport=processor_transport),
        routers=[*(m.router for m in ROUTES), tus.hidden], ready=ready,
        middleware=[Middleware(JsonBodyLimit, limit=settings.max_json_bytes, exempt=_is_upload),
                    Middleware(ActorScope)],
        metrics_dependencies=[Depends(authenticate)])
    install_tus(app, settings.allowed_origins)
    app.add_middleware(AccessLog)  # outermost: sees every answer, tus dispatch included
    document_roles(app)
    return app
