"""The processor's side of a session's writer lease: take it, renew it while writing, release it.

One writer per session across processors: the lease lives in storage's metadata
store (`POST /internal/v1/sessions/{id}/lease`), with an expiry and a fencing token
that every write carries.  A processor that stalls past its lease (a pause, a GC,
SIGSTOP) finds its writes refused with 409 `lease_lost` once another processor took
the session over: correctness comes from the token, not from the renewals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator

from sessions.common.errors import LeaseLost, ServiceError
from sessions.processor.storage_client import StorageClient

log = logging.getLogger("lucid.processor.lease")


def new_holder_id() -> str:
    """Return a random id naming this process as a lease holder (`pid-` and 16 hex digits)."""
    return f"{os.getpid()}-{secrets.token_hex(8)}"


@contextlib.asynccontextmanager
async def writer_lease(storage: StorageClient, sid: str, *, holder: str,
                       ttl: float) -> AsyncIterator[int]:
    """Hold sid's writer lease while the block runs; yield its fencing token.

    Raises 409 `upload_in_progress` if another processor holds an unexpired lease.
    The lease is renewed every ttl/3 seconds; a renewal refused with `lease_lost`
    stops renewing (the block's next write is refused the same way).  On exit the
    lease is released, shielded from cancellation; a failed release only logs (the
    lease then expires by itself).
    """
    lease = await storage.acquire_lease(sid, holder=holder, ttl_seconds=ttl)
    renewer = asyncio.create_task(_renew(storage, sid, holder=holder, token=lease.token,
                                         ttl=ttl), name=f"lease-renew-{sid}")
    try:
        yield lease.token
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await asyncio.shield(_release(storage, sid, holder=holder, token=lease.token))


async def _renew(storage: StorageClient, sid: str, *, holder: str, token: int,
                 ttl: float) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            await storage.renew_lease(sid, holder=holder, token=token, ttl_seconds=ttl)
        except LeaseLost:
            log.warning("lost the writer lease of session %s (token %d)", sid, token)
            return
        except ServiceError as exc:  # storage busy or down: try again next round
            log.warning("could not renew the writer lease of session %s: %s", sid, exc.code)


async def _release(storage: StorageClient, sid: str, *, holder: str, token: int) -> None:
    try:
        await storage.release_lease(sid, holder=holder, token=token)
    except ServiceError as exc:
        log.warning("could not release the writer lease of session %s: %s", sid, exc.code)
