"""Storage's readiness while a networked metadata store is prepared in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sessions.common.errors import NotReady
from sessions.common.secrets import ConfigError
from sessions.storage.dburl import MetadataUrl
from sessions.storage.errors import StorageUnavailable
from sessions.storage.metastore import MetadataStore

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
