"""Reused chunk buffers: the processor's memory stays flat whatever the session's size.

Every chunk passes through a plaintext buffer of the chunk size (8 MiB by default)
and a sealed buffer of about the same size.  Allocating them afresh for each chunk
costs twice: glibc either serves them from fresh mmaps (page faults and zeroing, a
large share of the processor's CPU: README, Performance) or from its heap, which fragments
under MiB-sized blocks of varying size until the resident set is several times the
live data.  A few buffers reused for every chunk avoid both.
"""

from __future__ import annotations

import asyncio
import mmap
import weakref
from collections import deque
from dataclasses import dataclass, field

from sessions.core import sealed_length_bound


def mapped(size: int) -> memoryview:
    """Return a writable view of `size` bytes of fresh anonymous memory.

    Unlike `bytearray(size)`, nothing is zero-filled up front: a page becomes
    resident only once written, so a buffer sized for the worst case (an
    incompressible chunk) costs only what its chunks actually fill.
    """
    return memoryview(mmap.mmap(-1, size))


class BufferPool:
    """Same-sized `mapped` buffers, handed out and taken back; at most `keep` are kept idle.

    Used from the event loop only (not thread-safe): buffers are acquired before
    work goes to a thread and released after the loop has seen it finish.  A
    buffer of another length (a short tail chunk: a view of its first bytes) is not kept.
    With a `budget`, every buffer the pool makes is counted in it until the buffer is
    gone (released past the budget, evicted, or dropped by a cancelled operation).
    """

    __slots__ = ("_free", "budget", "keep", "size")

    def __init__(self, size: int, *, keep: int, budget: MemoryBudget | None = None) -> None:
        if size <= 0 or keep < 0:
            raise ValueError("a pool needs a positive buffer size and keep >= 0")
        self.size, self.keep, self.budget = size, keep, budget
        self._free: list[memoryview] = []
        if budget is not None:
            budget.register(self)

    @property
    def idle(self) -> int:
        """Return how many buffers wait for reuse."""
        return len(self._free)

    def acquire(self, size: int | None = None) -> memoryview:
        """Return a buffer of `size` bytes (the pool's size); its content is arbitrary."""
        if size is not None and size != self.size:
            raise ValueError(f"this pool holds {self.size}-byte buffers, not {size}")
        if self._free:
            return self._free.pop()
        memory = mmap.mmap(-1, self.size)
        if self.budget is not None:
            weakref.finalize(memory, self.budget.dropped, self.size)
            self.budget.made(self.size)
        return memoryview(memory)

    def release(self, buf: memoryview) -> None:
        """Take a buffer back for reuse; the caller must no longer use it."""
        if (len(buf) == self.size and len(self._free) < self.keep
                and (self.budget is None or not self.budget.over)):
            self._free.append(buf)

    def drop_idle(self) -> bool:
        """Drop one idle buffer; return False if there was none."""
        if not self._free:
            return False
        self._free.pop()  # unmapped once nothing else refers to it
        return True

@dataclass
class ChunkBuffers:
    """The buffer pools for one chunk size, both of mapped memory (see `mapped`).

    `plain`: what the chunker fills, `chunk_size` bytes each.
    `sealed`: sealed chunks and decrypted payloads, sized for the worst case but
    resident only as far as written (about half a chunk for screen content).
    """

    chunk_size: int
    keep: int
    budget: MemoryBudget | None = None
    plain: BufferPool = field(init=False)
    sealed: BufferPool = field(init=False)

    def __post_init__(self) -> None:
        self.plain = BufferPool(self.chunk_size, keep=self.keep, budget=self.budget)
        self.sealed = BufferPool(sealed_length_bound(self.chunk_size), keep=self.keep,
                                 budget=self.budget)


class Lease:
    """A share of a MemoryBudget held by one operation; `size` bytes, given back once."""

    __slots__ = ("_budget", "_unpooled", "size")

    def __init__(self, budget: MemoryBudget, size: int) -> None:
        self._budget, self.size, self._unpooled = budget, size, 0

    def hold_unpooled(self, size: int) -> None:
        """Say that up to `size` of the lease's bytes live outside the pools (until released)."""
        self._unpooled += size
        self._budget.hold_unpooled(size)

    def release(self) -> None:
        """Give the share back (again: nothing happens)."""
        if self._unpooled:
            self._budget.let_go(self._unpooled)
            self._unpooled = 0
        if self.size:
            self._budget._give(self.size)
            self.size = 0


class MemoryBudget:
    """The processor-wide cap on chunk-buffer memory, shared by every operation at once.

    An upload, a replay or a verify first leases the bytes its pipeline may hold
    (`lease`): as much of what it wants as is free, at least its minimum, waiting
    in line (FIFO) while even that is not free.  So concurrency beyond the budget
    waits (back-pressure) instead of allocating.  The pooled buffers themselves
    are capped by the same figure (`ChunkBuffers`): idle buffers are dropped
    rather than kept past it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a memory budget must be positive")
        self.capacity = capacity
        self.leased = 0
        self.resident = 0  # bytes of pooled buffers that exist, idle or in use
        self.unpooled = 0  # bytes leases may hold outside the pools (replayed plaintext)
        self._line: deque[tuple[int, int, asyncio.Future[int]]] = deque()
        self._pools: list[BufferPool] = []

    @property
    def free(self) -> int:
        """Return the bytes not leased now."""
        return self.capacity - self.leased

    @property
    def over(self) -> bool:
        """Return whether pooled buffers and what leases hold outside them exceed the budget."""
        return self.resident + self.unpooled > self.capacity

    async def lease(self, want: int, *, least: int) -> Lease:
        """Return a lease of min(want, free) bytes once at least `least` are free (in turn).

        A minimum above the whole budget is cut to it: one such operation runs alone.
        """
        least = min(max(least, 1), self.capacity)
        want = max(want, least)
        if not self._line and self.free >= least:
            return self._grant(want)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._line.append((want, least, waiter))
        try:
            size = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())  # granted as it was cancelled
            else:
                self._line.remove((want, least, waiter))
                self._serve()
            raise
        return Lease(self, size)

    def _grant(self, want: int) -> Lease:
        size = min(want, self.free)
        self.leased += size
        return Lease(self, size)

    def _give(self, size: int) -> None:
        self.leased -= size
        self._serve()

    def _serve(self) -> None:
        while self._line and self.free >= self._line[0][1]:
            want, _, waiter = self._line.popleft()
            size = min(want, self.free)
            self.leased += size
            waiter.set_result(size)

    # -- the pooled buffers' side -----------------------------------------------------------

    def register(self, pool: BufferPool) -> None:
        self._pools.append(pool)

    def made(self, size: int) -> None:
        """Count a new pooled buffer; drop idle ones anywhere while past the budget."""
        self.resident += size
        self.trim()

    def trim(self) -> None:
        """Drop idle pooled buffers while past the budget."""
        for pool in self._pools:
            while self.over and pool.drop_idle():
                pass

    def hold_unpooled(self, size: int) -> None:
        """Count bytes a lease holds outside the pools (until `let_go`); idle buffers make room."""
        self.unpooled += size
        self.trim()

    def let_go(self, size: int) -> None:
        self.unpooled -= size

    def dropped(self, size: int) -> None:
        self.resident -= size
