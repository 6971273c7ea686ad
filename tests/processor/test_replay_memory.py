"""A replay holds no chunk's plaintext longer than the server needs it.

Each opened chunk is a chunk-sized object counted in the replay's lease; one kept
alive after it was handed on (the first one was, for the whole stream) was one chunk
more than the lease counts, and the processor's peak on a replay (README, "Memory:
one budget for the whole processor").
"""

from __future__ import annotations

import pytest

from tests.processor.test_readback import MemoryChunks, Node, plaintexts, sealed


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_replay_lets_go_of_a_chunk_once_it_is_handed_on() -> None:
    plains = plaintexts(4)
    rows, stored = sealed(plains)
    node = Node()
    stream = await node.reader(MemoryChunks(stored), rows).plaintext()
    first = await anext(stream)
    second = await anext(stream)
    assert (first, second) == (plains[0], plains[1])
    held = list(stream.ag_frame.f_locals.values())  # type: ignore[attr-defined]
    held += [x for v in held if isinstance(v, tuple) for x in v]
    assert not any(v is first for v in held), "the stream still holds the first chunk"
    assert any(v is second for v in held)  # the piece it handed out last, as the probe's check
    await stream.aclose()
    assert node.budget.leased == 0
