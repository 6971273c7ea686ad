"""The storage app: `create_app(settings)` wires the lifespan-built stores to the routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sessions.common.app import build_app
from sessions.common.errors import NotReady
from sessions.common.web import Metrics
from sessions.storage.chunkstore import ChunkStore, LocalChunkStore
from sessions.storage.config import Settings, load_settings
from sessions.storage.deps import Resources
from sessions.storage.errors import StorageUnavailable
from sessions.storage.metastore import open_metastore
from sessions.storage.readiness import MetadataReadiness
from sessions.storage.routes import (
    audit,
    checkpoints,
    chunks,
    leases,
    lifecycle,
    sessions,
    tokens,
)
from sessions.storage.service import StorageService

ROUTERS = [m.router for m in (sessions, chunks, checkpoints, tokens, lifecycle, audit, leases)]
log = logging.getLogger("lucid.storage")


@asynccontextmanager
async def lifespan(settings: Settings, metrics: Metrics) -> AsyncIterator[Resources]:
    """Build the stores; close the metadata store on the way out.

    SQLite is opened (and migrated) before serving; MongoDB is prepared in the background.
    """
    url = settings.metadata()
    root = settings.storage_dir
    await asyncio.to_thread(root.mkdir, mode=0o700, parents=True, exist_ok=True)
    meta = await open_metastore(url, prepare=url.scheme == "sqlite")
    store = _chunk_store(settings)
    service = StorageService(meta, store, max_chunk_bytes=settings.max_chunk_bytes,
                             metrics=metrics, min_free_bytes=settings.min_free_bytes)
    readiness = MetadataReadiness(meta, url, on_ready=lambda: _sweep(store, service))
    if url.scheme == "sqlite":
        await _sweep(store, service)
        readiness.reason = None
    else:
        readiness.start()  # sweeps once the database answers, before any request runs
    try:
        yield Resources(readiness=readiness, metastore=meta, chunkstore=store, service=service)
    finally:
        await readiness.stop()
        await meta.close()


def _chunk_store(settings: Settings) -> ChunkStore:
    """Return the chunk store the settings name: S3 if LUCID_CHUNK_STORE_URL is set, else
    the local directory."""
    location = settings.chunk_store_location()
    if location is None:
        return LocalChunkStore(settings.storage_dir)
    log.info("sealed chunks are kept in %s", location.redacted)
    from sessions.storage.s3store import open_s3_store  # noqa: PLC0415 - obstore only on S3

    return open_s3_store(location, buffer_bytes=settings.s3_put_buffer_mb << 20)


async def _sweep(store: ChunkStore, service: StorageService) -> None:
    """Remove what a crash left (before serving, so no upload is in flight), and say so."""
    if isinstance(store, LocalChunkStore) and (temps := await store.sweep_temp_files()):
        log.warning("removed %d temp chunk file(s) left by an interrupted upload", temps)
    swept, unknown = await service.sweep()
    if swept:
        log.warning("removed uncommitted or deleted chunk files of %d session(s)", swept)
    if unknown:
        log.warning("%d chunk director(y/ies) belong to no known session; left alone "
                    "(first: %s)", len(unknown), unknown[0])


async def ready(resources: Resources) -> None:
    """Raise NotReady unless the metadata store is prepared and answers, and the volume too."""
    readiness = resources.readiness
    readiness.check()
    try:
        await resources.metastore.ping()
    except StorageUnavailable as exc:
        cause = type(exc.__cause__ or exc).__name__
        raise NotReady(f"metadata store {readiness.url.redacted}: unreachable ({cause})"
                       ) from exc
    await resources.chunkstore.ping()


async def count_sessions(resources: Resources, metrics: Metrics) -> None:
    """Set the sessions-by-state gauge from the metadata store."""
    for state, count in (await resources.metastore.count_by_state()).items():
        metrics.sessions.labels(metrics.service, state).set(count)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the storage app; its resources are built when its lifespan starts."""
    settings = settings if settings is not None else load_settings()
    return build_app(
        "storage", settings, title="Lucid session storage (internal)", internal=True,
        description="Sealed chunks and session metadata. Service token only.",
        lifespan=lambda metrics: lifespan(settings, metrics), routers=ROUTERS, ready=ready,
        before_scrape=count_sessions, upstream=False)
