"""The storage app: `create_app(settings)` wires the lifespan-built stores to the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from sessions.common.auth import ServiceTokenGate
from sessions.common.errors import NotReady
from sessions.common.secrets import ConfigError
from sessions.common.web import Metrics, install_common
from sessions.storage.chunkstore import LocalChunkStore
from sessions.storage.config import Settings, load_settings
from sessions.storage.dburl import MetadataUrl
from sessions.storage.errors import StorageUnavailable
from sessions.storage.metastore import MetadataStore, open_metastore
from sessions.storage.routes import audit, checkpoints, chunks, lifecycle, sessions, tokens
from sessions.storage.service import StorageService

FIRST_RETRY, MAX_RETRY = 0.25, 10.0  # seconds between attempts to reach the metadata database
log = logging.getLogger("lucid.storage")


class MetadataReadiness:
    """Prepares a networked metadata store in the background, retrying with backoff.

    A database that is down at start makes storage not ready (/ready 503 with the
    reason), never a crash loop; once it answers, migrations run and storage is ready.
    """

    def __init__(self, meta: MetadataStore, url: MetadataUrl,
                 on_ready: Callable[[], Awaitable[None]]) -> None:
        self.meta, self.url, self.on_ready = meta, url, on_ready
        self.reason: str | None = "not connected yet"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lucid-metadata-prepare")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check(self) -> None:
        """Raise NotReady naming the (redacted) database while it is not prepared."""
        if self.reason is not None:
            raise NotReady(f"metadata store {self.url.redacted}: {self.reason}")

    def require(self) -> None:
        """Raise StorageUnavailable (503) while not prepared: no request runs before migrations."""
        if self.reason is not None:
            raise StorageUnavailable("the metadata store is not ready yet; retry later")

    async def _run(self) -> None:
        delay = FIRST_RETRY
        while True:
            try:
                await self.meta.prepare()
                await self.on_ready()  # e.g. the start-up sweep, before any request runs
            except ConfigError as exc:  # e.g. a newer schema: retrying will not help
                self.reason = str(exc)
                log.error("metadata store %s: %s", self.url.redacted, exc)
                return
            except Exception as exc:  # any failure to reach it: report, wait, retry
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                self.reason = f"unreachable or refused ({type(cause).__name__}); retrying"
                log.warning("metadata store %s unreachable or refused (%s); retrying in %.1f s",
                            self.url.redacted, type(cause).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            self.reason = None
            log.info("metadata store %s ready", self.url.redacted)
            return


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the stores and read the service token; close the metadata store on the way out.

    SQLite is opened (and migrated) before serving; MongoDB is prepared in the background.
    """
    settings: Settings = app.state.settings
    app.state.service_token = settings.service_token()
    url = settings.metadata()
    root = settings.storage_dir
    await asyncio.to_thread(root.mkdir, mode=0o700, parents=True, exist_ok=True)
    meta = await open_metastore(url, prepare=url.scheme == "sqlite")
    store = LocalChunkStore(root)
    service = StorageService(meta, store, max_chunk_bytes=settings.max_chunk_bytes,
                             metrics=app.state.metrics, min_free_bytes=settings.min_free_bytes)
    readiness = MetadataReadiness(meta, url, on_ready=lambda: _sweep(store, service))
    if url.scheme == "sqlite":
        await _sweep(store, service)
        readiness.reason = None
    else:
        readiness.start()  # sweeps once the database answers, before any request runs
    app.state.readiness = readiness
    app.state.metastore = meta
    app.state.chunkstore = store
    app.state.service = service
    try:
        yield
    finally:
        await readiness.stop()
        await meta.close()


async def _sweep(store: LocalChunkStore, service: StorageService) -> None:
    """Remove what a crash left (before serving, so no upload is in flight), and say so."""
    if temps := await store.sweep_temp_files():
        log.warning("removed %d temp chunk file(s) left by an interrupted upload", temps)
    swept, unknown = await service.sweep()
    if swept:
        log.warning("removed uncommitted or deleted chunk files of %d session(s)", swept)
    if unknown:
        log.warning("%d chunk director(y/ies) belong to no known session; left alone "
                    "(first: %s)", len(unknown), unknown[0])


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the storage app; its resources are built when its lifespan starts."""
    app = FastAPIOffline(title="Lucid session storage (internal)", version="1",
                         description="Sealed chunks and session metadata. Service token only.",
                         lifespan=lifespan, redirect_slashes=False)
    metrics = Metrics("storage")
    app.state.settings = settings if settings is not None else load_settings()
    app.state.metrics = metrics

    async def ready() -> None:
        readiness: MetadataReadiness = app.state.readiness
        readiness.check()
        try:
            await app.state.metastore.ping()
        except StorageUnavailable as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise NotReady(f"metadata store {readiness.url.redacted}: unreachable ({cause})"
                           ) from exc
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
    app.include_router(checkpoints.router)
    app.include_router(tokens.router)
    app.include_router(lifecycle.router)
    app.include_router(audit.router)
    return app
