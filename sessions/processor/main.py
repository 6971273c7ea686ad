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
from fastapi import FastAPI

from sessions.common.app import build_app
from sessions.common.web import Metrics
from sessions.processor.config import Settings, load_settings
from sessions.processor.deps import Resources
from sessions.processor.engine import Engine
from sessions.processor.keys import NodeKeys, load_node_keys
from sessions.processor.lease import holder_identity
from sessions.processor.routes import node, replay, sessions, tokens, upload_prefix, uploads
from sessions.processor.scrub import Scrubber
from sessions.processor.storage_client import StorageClient
from sessions.processor.sweeper import Sweeper

ROUTERS = [m.router for m in (sessions, uploads, upload_prefix, replay, node, tokens)]


@asynccontextmanager
async def lifespan(settings: Settings, metrics: Metrics, *, keys: NodeKeys,
                   storage_transport: httpx.AsyncBaseTransport | None = None
                   ) -> AsyncIterator[Resources]:
    """Open the storage client and the engine, run the scrub and sweep loops; stop all after."""
    uds = settings.upstream_uds
    storage = StorageClient(settings.storage_url, settings.service_token(),
                            transport=storage_transport, kind=settings.http_transport,
                            tls=settings.upstream_tls(), uds=None if uds is None else str(uds))
    tasks: list[asyncio.Task[None]] = []
    with holder_identity(settings.lease_holder_dir, settings.node_name) as holder:
        engine = Engine(storage, keys, settings, metrics, holder=holder)
        scrubber = Scrubber(engine, settings, metrics) if settings.scrub_interval > 0 else None
        resources = Resources(storage, engine, Sweeper(engine, settings), scrubber)
        if scrubber is not None:
            tasks.append(asyncio.create_task(scrubber.run(), name="lucid-scrub"))
        if settings.sweep_interval > 0:
            tasks.append(asyncio.create_task(resources.sweeper.run(), name="lucid-sweep"))
        try:
            yield resources
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            engine.close()
            await storage.aclose()


async def ready(resources: Resources) -> None:
    """Raise unless storage answers its readiness check."""
    await resources.storage.ready()


async def refresh_gauges(resources: Resources, metrics: Metrics) -> None:
    """Set the sessions-by-state gauge from storage's counts."""
    for state, n in (await resources.storage.stats()).items():
        metrics.sessions.labels(metrics.service, state).set(n)


def create_app(settings: Settings | None = None, *,
               storage_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Return the processor app; raise ConfigError now if its keys or token are unusable."""
    settings = settings or load_settings()
    keys = load_node_keys(settings)
    return build_app(
        "processor", settings, title="Lucid chunk processor (internal)", internal=True,
        lifespan=lambda metrics: lifespan(settings, metrics, keys=keys,
                                          storage_transport=storage_transport),
        routers=ROUTERS, ready=ready, before_scrape=refresh_gauges)
