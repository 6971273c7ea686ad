"""The storage app: `create_app(settings)` wires the lifespan-built stores to the routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from sessions.common.auth import require_token
from sessions.common.errors import Unauthorized
from sessions.common.web import Metrics, install_common
from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.config import Settings, load_settings
from sessions.storage.metastore import SqliteMetadataStore
from sessions.storage.routes import chunks, sessions
from sessions.storage.service import StorageService

INTERNAL_PREFIX = "/internal/"
METADATA_FILE = "metadata.sqlite3"
log = logging.getLogger("lucid.storage")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the stores and read the service token; close the metadata store on the way out."""
    settings: Settings = app.state.settings
    app.state.service_token = settings.service_token()
    root = settings.storage_dir
    await asyncio.to_thread(root.mkdir, mode=0o700, parents=True, exist_ok=True)
    meta = await SqliteMetadataStore.open(root / METADATA_FILE)
    store = LocalChunkStore(root)
    if swept := await store.sweep_temp_files():
        log.warning("removed %d temp chunk file(s) left by an interrupted upload", swept)
    app.state.metastore = meta
    app.state.chunkstore = store
    app.state.service = StorageService(meta, store, max_chunk_bytes=settings.max_chunk_bytes,
                                       metrics=app.state.metrics)
    try:
        yield
    finally:
        await meta.close()


class ServiceTokenGate:
    """Refuses `/internal/` requests without the service token before any body byte is read.

    The routers also depend on the token check; this gate exists because FastAPI
    reads a JSON body before it runs dependencies, and storage reads nothing
    from a caller it does not trust.
    """

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(INTERNAL_PREFIX):
            try:
                require_token(HTTPConnection(scope), self.state.service_token)
            except Unauthorized as err:
                response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the storage app; its resources are built when its lifespan starts."""
    app = FastAPIOffline(title="Lucid session storage (internal)", version="1",
                         description="Sealed chunks and session metadata. Service token only.",
                         lifespan=lifespan, redirect_slashes=False)
    metrics = Metrics("storage")
    app.state.settings = settings if settings is not None else load_settings()
    app.state.metrics = metrics

    async def ready() -> None:
        await app.state.metastore.ping()
        await app.state.chunkstore.ping()

    async def before_scrape() -> None:
        counts = await app.state.metastore.count_by_state()
        for state, count in counts.items():
            metrics.sessions.labels(metrics.service, state).set(count)

    app.add_middleware(ServiceTokenGate, state=app.state)
    install_common(app, metrics=metrics, ready=ready, before_scrape=before_scrape,
                   upstream=False)
    app.include_router(sessions.router)
    app.include_router(chunks.router)
    return app
