"""The processor's side of a session's writer lease: take it, renew it while writing, release it.

One writer per session across processors: the lease lives in storage's metadata
store (`POST /internal/v1/sessions/{id}/lease`), with an expiry and a fencing token
that every write carries.  A processor that stalls past its lease (a pause, a GC,
SIGSTOP) finds its writes refused with 409 `lease_lost` once another processor took
the session over: correctness comes from the token, not from the renewals.

The holder id names a processor *instance of a data dir*, not a boot: a processor
restarted after a crash claims its dead predecessor's id (`holder_identity`) and so
takes the leases it left behind over at once instead of waiting for them to lapse.
Every acquire, one's own included, still gets a new, larger fencing token, so
whatever the predecessor had in flight is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from sessions.common.errors import LeaseLost, ServiceError
from sessions.processor.storage_client import StorageClient

log = logging.getLogger("lucid.processor.lease")


HOLDER_SUFFIX = ".holder"
_HOLDER = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@contextlib.contextmanager
def holder_identity(directory: Path, node_name: str) -> Iterator[str]:
    """Hold a lease-holder id of this data dir for the block's duration; yield it.

    Each id is a file `<id>.holder` in `directory`, held with an exclusive flock while
    a processor runs (the kernel drops it when the process dies, SIGKILL included).
    The first id no live process holds is reused: a restarted processor becomes its
    predecessor again and may take that one's unexpired leases over at once.  Only
    when every id is held (several processors on one data dir) is a new one made,
    `<node name>.<12 hex digits>`.  Another processor never shares an id with a live one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        for path in sorted(directory.glob("*" + HOLDER_SUFFIX)):
            holder = path.name.removesuffix(HOLDER_SUFFIX)
            fd = _lock(path) if _HOLDER.fullmatch(holder) else None
            if fd is not None:
                break
        else:
            holder = f"{node_name[:48]}.{secrets.token_hex(6)}"
            path = directory / (holder + HOLDER_SUFFIX)
            fd = _lock(path, create=True)
            if fd is None:  # another starting processor locked the new file first
                continue
        break
    log.info("writer lease holder id %s", holder)
    try:
        yield holder
    finally:
        os.close(fd)


def _lock(path: Path, *, create: bool = False) -> int | None:
    """Return an fd of path holding its exclusive flock, or None if a live process holds it."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except (FileExistsError, FileNotFoundError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


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
