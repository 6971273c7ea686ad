"""The chunk processor app (port 8085): the only service holding keys.

Secrets are read when the app is created, so a missing or malformed key stops
the service before it binds a port; HTTP clients live in the lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from sessions.common.auth import ServiceTokenGate
from sessions.common.web import Metrics, install_common
from sessions.processor.config import Settings, load_settings
from sessions.processor.deps import require_service
from sessions.processor.engine import Engine
from sessions.processor.keys import load_node_keys
from sessions.processor.routes import node, replay, sessions, tokens, upload_prefix, uploads
from sessions.processor.scrub import Scrubber
from sessions.processor.storage_client import StorageClient
from sessions.processor.sweeper import Sweeper


def create_app(settings: Settings | None = None, *,
               storage_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Return the processor app; raise ConfigError now if its keys or token are unusable."""
    settings = settings or load_settings()
    keys = load_node_keys(settings)
    token = settings.service_token()
    metrics = Metrics("processor")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = StorageClient(settings.storage_url, token, transport=storage_transport,
                                kind=settings.http_transport)
        engine = Engine(storage, keys, settings, metrics)
        app.state.engine = engine
        tasks = []
        if settings.scrub_interval > 0:
            app.state.scrubber = Scrubber(engine, settings, metrics)
            tasks.append(asyncio.create_task(app.state.scrubber.run(), name="lucid-scrub"))
        app.state.sweeper = Sweeper(engine, settings)
        if settings.sweep_interval > 0:
            tasks.append(asyncio.create_task(app.state.sweeper.run(), name="lucid-sweep"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            engine.close()
            await storage.aclose()

    app = FastAPIOffline(title="Lucid chunk processor (internal)", lifespan=lifespan,
                         version="0.1.0")
    app.state.service_token = token
    app.state.scrubber = None
    app.state.settings = settings

    async def ready() -> None:
        await app.state.engine.storage.ready()

    async def refresh_gauges() -> None:
        for state, n in (await app.state.engine.storage.stats()).items():
            metrics.sessions.labels("processor", state).set(n)

    app.add_middleware(ServiceTokenGate, state=app.state)
    install_common(app, metrics=metrics, ready=ready, before_scrape=refresh_gauges)
    for module in (sessions, uploads, upload_prefix, replay, node, tokens):
        app.include_router(module.router, dependencies=[Depends(require_service)])
    return app
