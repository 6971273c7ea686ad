"""A second sweeping process for the lifecycle contract: `python -m tests.storage.sweep_worker`.

Arguments: URL BEFORE BATCH.  Opens the store, prints `ready`, waits for a line on stdin,
then lists expired sessions (as of BEFORE) a batch at a time and erases each, as the
processor's sweep does, until none is left; prints how many passes it made.
"""

from __future__ import annotations

import asyncio
import sys

from sessions.storage.dburl import parse
from sessions.storage.metastore import MetadataStore, open_metastore


async def sweep(store: MetadataStore, before: str, batch: int) -> int:
    """Erase every session expired as of `before`, `batch` at a time; return the passes made."""
    passes = 0
    while rows := await store.list_expired(before=before, limit=batch):
        passes += 1
        for rec in rows:
            await store.erase(rec.id)
            await asyncio.sleep(0)
    return passes


async def main(url: str, before: str, batch: int) -> None:
    store = await open_metastore(parse(url))
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # start together with the other sweeper
        print(await sweep(store, before, batch), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
