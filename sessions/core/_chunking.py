"""Cut a byte stream into fixed-size chunks, each byte copied exactly once.

A recording arrives as pieces of arbitrary size (HTTP body reads, socket
reads). The chunker fills one preallocated `bytearray` of `chunk_size` bytes
through a `memoryview`; when it is full it is handed over as is and a fresh
one is allocated for the next chunk. So memory stays bounded by about one
chunk beyond the piece being fed, and there is no quadratic re-concatenation.

Spec: docs/format.md, "Chunking".
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "ChunkBuffer",
    "Chunker",
    "check_chunk_size",
    "chunk_stream",
]

MiB = 1024 * 1024

MIN_CHUNK_SIZE = 1 * MiB
MAX_CHUNK_SIZE = 16 * MiB
# Chosen by benchmark (the figures: README, Performance).  `python -m bench.core` alone
# favours 1 MiB (a chunk stays in the CPU caches between zstd, AES and SHA-256), but end
# to end (`python -m bench.e2e`) every chunk also costs an HTTP PUT, a temp file, an
# fsync and a metadata commit, so larger chunks took less CPU and time per GiB, up to
# 8 MiB; 16 MiB saved little more and raised the processor's peak RSS.
DEFAULT_CHUNK_SIZE = 8 * MiB

Piece = bytes | bytearray | memoryview
ChunkBuffer = bytearray | memoryview
"""What a chunk is handed over as: a bytearray by default, or the caller's own buffer."""


def check_chunk_size(n: int) -> int:
    """Return `n` if it is a valid chunk size, else raise ValueError.

    Precondition: MIN_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE, n an int (not a bool).
    Spec: docs/format.md, "Chunking".
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError("chunk size must be an integer")
    if not MIN_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes, got {n}"
        )
    return n


def _byte_view(piece: Piece) -> memoryview:
    """Return a flat unsigned-byte view of `piece` (any C-contiguous buffer)."""
    view = memoryview(piece)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class Chunker:
    """Cut pieces fed one by one into chunks of exactly `chunk_size` bytes.

    Every chunk returned by `feed` is full; `flush` returns the short tail (or
    None when nothing is buffered). Returned buffers belong to the caller: the
    chunker keeps no reference to them.  By default each chunk is a fresh
    bytearray (a tail is trimmed in place); with `allocate`, each chunk is the
    buffer it returned (a writable bytearray or memoryview of exactly chunk_size
    bytes), and a tail is a memoryview of its first bytes when it is not a bytearray.
    Precondition: MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE.
    """

    __slots__ = ("_allocate", "_buf", "_chunk_size", "_fill", "_view")

    def __init__(self, *, chunk_size: int,
                 allocate: Callable[[int], ChunkBuffer] | None = None) -> None:
        self._chunk_size = check_chunk_size(chunk_size)
        # `allocate(n)` lets a caller hand in reused buffers (a pool); the default is fresh.
        self._allocate: Callable[[int], ChunkBuffer] = (
            allocate if allocate is not None else bytearray)
        # Allocated lazily, so an idle chunker between chunks holds no buffer.
        self._buf: ChunkBuffer | None = None
        self._view: memoryview | None = None
        self._fill = 0

    @property
    def chunk_size(self) -> int:
        """Return the size of every full chunk."""
        return self._chunk_size

    @property
    def buffered(self) -> int:
        """Return the number of bytes waiting for the current chunk to fill (< chunk_size)."""
        return self._fill

    def feed(self, piece: Piece) -> list[ChunkBuffer]:
        """Return the chunks completed by appending `piece` (possibly none).

        Precondition: `piece` is a C-contiguous buffer; len(piece) >= 0.
        """
        return list(self.iter_feed(piece))

    def iter_feed(self, piece: Piece) -> Iterator[ChunkBuffer]:
        """Yield the chunks completed by appending `piece`, one at a time.

        Lazy variant of `feed`: a consumer that drops each chunk before the next
        is filled keeps memory at about one chunk even for a huge piece.
        """
        src = _byte_view(piece)
        offset, total = 0, src.nbytes
        while offset < total:
            view = self._target()
            take = min(self._chunk_size - self._fill, total - offset)
            view[self._fill : self._fill + take] = src[offset : offset + take]
            self._fill += take
            offset += take
            if self._fill == self._chunk_size:
                yield self._hand_over()

    def flush(self) -> ChunkBuffer | None:
        """Return the buffered short tail (1 <= len < chunk_size), or None if empty.

        The chunker is empty afterwards and may be fed again.
        """
        if self._fill == 0:
            return None
        return self._hand_over()

    def _target(self) -> memoryview:
        """Return the view of the buffer being filled, allocating it if needed."""
        if self._view is None:
            buf = self._allocate(self._chunk_size)
            if len(buf) != self._chunk_size or (isinstance(buf, memoryview) and buf.readonly):
                raise ValueError(f"allocate must return {self._chunk_size} writable bytes")
            self._buf = buf
            self._view = memoryview(buf)
        return self._view

    def _hand_over(self) -> ChunkBuffer:
        """Return the current buffer trimmed to its fill, detaching it from the chunker."""
        assert self._buf is not None and self._view is not None
        buf, fill = self._buf, self._fill
        # Release the export first: the caller must be free to resize its bytearray.
        self._view.release()
        self._buf, self._view, self._fill = None, None, 0
        if fill == len(buf):
            return buf
        if isinstance(buf, memoryview):
            return buf[:fill]  # the caller's buffer, not copied
        del buf[fill:]  # shrinks in place; the kept bytes are not copied again
        return buf


async def chunk_stream(
    pieces: AsyncIterable[Piece], *, chunk_size: int,
    allocate: Callable[[int], ChunkBuffer] | None = None,
) -> AsyncIterator[ChunkBuffer]:
    """Yield full chunks of exactly `chunk_size` bytes, then a short final chunk if any.

    An empty stream yields nothing; no chunk is ever empty. Memory is bounded by
    about one chunk plus the piece being consumed.
    `allocate(chunk_size)`, if given, supplies each chunk's buffer (e.g. from a pool).
    Precondition: MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE.
    Spec: docs/format.md, "Chunking".
    """
    chunker = Chunker(chunk_size=chunk_size, allocate=allocate)
    async for piece in pieces:
        for chunk in chunker.iter_feed(piece):
            yield chunk
    tail = chunker.flush()
    if tail is not None:
        yield tail
