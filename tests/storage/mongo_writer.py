"""A second storage process for the concurrency test: `python -m tests.storage.mongo_writer`.

Arguments: URL SESSION_ID TAG ROUNDS.  Each round reads the session and tries to commit
one 7-byte chunk at the offset it read; prints how many of its commits won.
"""

from __future__ import annotations

import asyncio
import sys

from sessions.common.errors import Conflict, OffsetMismatch
from sessions.storage.dburl import parse
from sessions.storage.errors import ChunkCommitted
from sessions.storage.metastore import MetadataStore, open_metastore
from sessions.storage.records import ChunkRecord


async def race(store: MetadataStore, sid: str, tag: int, rounds: int) -> int:
    """Return how many of `rounds` commits of one chunk at the read offset won."""
    wins = 0
    for _ in range(rounds):
        cur = await store.get_session(sid)
        chunk = ChunkRecord(index=cur.chunk_count, offset=cur.offset, length=7, sealed_length=9,
                            leaf_hash=bytes([tag]) * 32, compressed=False)
        try:
            await store.commit_chunks(sid, expected_offset=cur.offset, chunks=[chunk])
            wins += 1
        except (OffsetMismatch, Conflict, ChunkCommitted):
            pass
    return wins


async def main(url: str, sid: str, tag: int, rounds: int) -> None:
    store = await open_metastore(parse(url))
    try:
        print(await race(store, sid, tag, rounds), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
