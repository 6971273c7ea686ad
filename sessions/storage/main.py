"""The storage app: `create_app(settings)` wires the lifespan-built stores to the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sessions.common.app import build_app
from sessions.common.errors import NotReady, ServiceError
from sessions.common.web import Metrics
from sessions.storage.chunkstore import ChunkStore, LocalChunkStore
from sessions.storage.config import Settings, load_settings
from sessions.storage.dburl import MetadataUrl
from sessions.storage.deps import Resources
from sessions.storage.dirlock import DirectoryLock
from sessions.storage.errors import StorageUnavailable
from sessions.storage.metastore import MetadataStore, open_metastore
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
from sessions.storage.sweep import OrphanSweeper

ROUTERS = [m.router for m in (sessions, chunks, checkpoints, tokens, lifecycle, audit, leases)]
log = logging.getLogger("lucid.storage")


@asynccontextmanager
async def lifespan(settings: Settings, metrics: Metrics) -> AsyncIterator[Resources]:
    """Build the stores; close the metadata store on the way out.

    SQLite is opened (and migrated) before serving; MongoDB is prepared in the background.
    The local chunk directory is locked for this process's lifetime (`DirectoryLock`).
    """
    url = settings.metadata()
    root = settings.storage_dir
    await asyncio.to_thread(root.mkdir, mode=0o700, parents=True, exist_ok=True)
    store = _chunk_store(settings)
    lock = DirectoryLock(root) if not store.shared else None
    try:
        meta = await open_metastore(url, prepare=url.scheme == "sqlite")
        service = StorageService(meta, store, max_chunk_bytes=settings.max_chunk_bytes,
                                 metrics=metrics, min_free_bytes=settings.min_free_bytes,
                                 grace_seconds=settings.orphan_grace_seconds)
        sweeper = OrphanSweeper(service, metrics)
        async with _sweeping(sweeper, settings, meta, url) as readiness:
            yield Resources(readiness=readiness, metastore=meta, chunkstore=store,
                            service=service)
    finally:
        if lock is not None:
            lock.release()


@asynccontextmanager
async def _sweeping(sweeper: OrphanSweeper, settings: Settings, meta: MetadataStore,
                    url: MetadataUrl) -> AsyncIterator[MetadataReadiness]:
    """Run the start-up sweep and then the periodic one; yield the metadata readiness.

    The local directory is swept whole before serving (no upload is in flight: its lock
    keeps other processes out); a shared store is swept in the background, by the grace.
    """
    shared = sweeper.service.chunks.shared
    periodic: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal periodic
        if not shared:
            await _sweep(sweeper)
        if settings.orphan_sweep_seconds > 0 or shared:
            periodic = asyncio.create_task(_periodic(sweeper, settings.orphan_sweep_seconds),
                                           name="lucid-orphan-sweep")

    readiness = MetadataReadiness(meta, url, on_ready=start)
    try:
        if url.scheme == "sqlite":
            await start()
            readiness.reason = None
        else:
            readiness.start()  # sweeps once the database answers, before any request runs
        yield readiness
    finally:
        if periodic is not None:
            periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await periodic
        await readiness.stop()
        await meta.close()


async def _periodic(sweeper: OrphanSweeper, interval: float) -> None:
    """A shared store's whole sweep first (by the grace), then one batch per interval."""
    if sweeper.service.chunks.shared:
        try:
            report = await sweeper.sweep_all()
            _log_report(report.removed)
        except ServiceError as exc:
            log.warning("start-up orphan sweep stopped: %s (%s)", exc.code, exc.detail)
    if interval > 0:
        await sweeper.run(interval)


def _chunk_store(settings: Settings) -> ChunkStore:
    """Return the chunk store the settings name: S3 if LUCID_CHUNK_STORE_URL is set, else
    the local directory."""
    location = settings.chunk_store_location()
    if location is None:
        return LocalChunkStore(settings.storage_dir)
    log.info("sealed chunks are kept in %s", location.redacted)
    from sessions.storage.s3store import open_s3_store  # noqa: PLC0415 - obstore only on S3

    return open_s3_store(location, buffer_bytes=settings.s3_put_buffer_mb << 20)


async def _sweep(sweeper: OrphanSweeper) -> None:
    """Remove what a crash left in the local directory (before serving, so no upload is in
    flight: any age goes), and say so."""
    store = sweeper.service.chunks
    if isinstance(store, LocalChunkStore) and (temps := await store.sweep_temp_files()):
        log.warning("removed %d temp chunk file(s) left by an interrupted upload", temps)
    report = await sweeper.sweep_all(grace=False)
    _log_report(report.removed)


def _log_report(removed: int) -> None:
    if removed:
        log.warning("removed %d uncommitted or deleted chunk(s)", removed)


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
