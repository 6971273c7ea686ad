"""Reused chunk buffers: the processor's memory stays flat whatever the session's size.

Every chunk passes through a plaintext buffer of the chunk size (8 MiB by default)
and a sealed buffer of about the same size.  Allocating them afresh for each chunk
costs twice: glibc either serves them from fresh mmaps (page faults and zeroing:
~20 % of the processor's CPU, measured with perf) or from its heap, which fragments
under MiB-sized blocks of varying size until the resident set is several times the
live data.  A few buffers reused for every chunk avoid both.
"""

from __future__ import annotations

import mmap
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
    """

    __slots__ = ("_free", "keep", "size")

    def __init__(self, size: int, *, keep: int) -> None:
        if size <= 0 or keep < 0:
            raise ValueError("a pool needs a positive buffer size and keep >= 0")
        self.size, self.keep = size, keep
        self._free: list[memoryview] = []

    @property
    def idle(self) -> int:
        """Return how many buffers wait for reuse."""
        return len(self._free)

    def acquire(self, size: int | None = None) -> memoryview:
        """Return a buffer of `size` bytes (the pool's size); its content is arbitrary."""
        if size is not None and size != self.size:
            raise ValueError(f"this pool holds {self.size}-byte buffers, not {size}")
        return self._free.pop() if self._free else mapped(self.size)

    def release(self, buf: memoryview) -> None:
        """Take a buffer back for reuse; the caller must no longer use it."""
        if len(buf) == self.size and len(self._free) < self.keep:
            self._free.append(buf)


@dataclass
class ChunkBuffers:
    """The buffer pools for one chunk size, both of mapped memory (see `mapped`).

    `plain`: what the chunker fills, `chunk_size` bytes each.
    `sealed`: sealed chunks and decrypted payloads, sized for the worst case but
    resident only as far as written (about half a chunk for screen content).
    """

    chunk_size: int
    keep: int
    plain: BufferPool = field(init=False)
    sealed: BufferPool = field(init=False)

    def __post_init__(self) -> None:
        self.plain = BufferPool(self.chunk_size, keep=self.keep)
        self.sealed = BufferPool(sealed_length_bound(self.chunk_size), keep=self.keep)
