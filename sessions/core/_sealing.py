"""Seal and open chunks: sealed-chunk format v1 (zstd, then AES-256-GCM).

    sealed = header (32 bytes) || ciphertext || GCM tag (16 bytes)
    AAD    = CHUNK_AAD_DOMAIN || u8 len(session_id) || session_id || header

The header is public (auditors parse it without keys) but authenticated, so a
chunk moved to another index or spliced into another session does not open.
This module is the single boundary where zstandard's and cryptography's
exceptions become `OpenError`.

Spec: docs/format.md, "Sealed chunk format v1".
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from enum import IntFlag
from typing import IO, cast

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sessions.core._chunking import MAX_CHUNK_SIZE
from sessions.core._errors import HeaderError, OpenError
from sessions.core._merkle_hash import leaf_hash

__all__ = [
    "CHUNK_AAD_DOMAIN",
    "CHUNK_MAGIC",
    "CIPHER_NAME",
    "DEFAULT_ZSTD_LEVEL",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAX_PLAINTEXT_LENGTH",
    "NONCE_SIZE",
    "TAG_SIZE",
    "ChunkFlags",
    "ChunkHeader",
    "ChunkSealer",
    "SealedChunk",
    "chunk_aad",
    "parse_header",
    "sealed_length_bound",
]

CIPHER_NAME = "AES-256-GCM"
FORMAT_VERSION = 1
CHUNK_MAGIC = b"LUCS"
CHUNK_AAD_DOMAIN = b"lucid-sessions/chunk/v1\x00"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_PLAINTEXT_LENGTH = MAX_CHUNK_SIZE
MAX_INDEX = 2**64 - 1
MAX_SESSION_ID_LENGTH = 255
DEFAULT_ZSTD_LEVEL = 2
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = 1, 19

# magic, version u8, flags u8, reserved u16, index u64, plaintext length u32, nonce.
_HEADER = struct.Struct(f">4sBBHQI{NONCE_SIZE}s")
HEADER_SIZE = _HEADER.size
assert HEADER_SIZE == 32

_OPEN_FAILED = "sealed chunk failed to open"


class ChunkFlags(IntFlag):
    """Bits of the header's flags byte; undefined bits must be zero."""

    NONE = 0
    COMPRESSED = 0x01  # payload is one zstd frame that carries its content size


_KNOWN_FLAGS = int(ChunkFlags.COMPRESSED)


def _header_problem(version: int, flags: int, reserved: int, plaintext_length: int) -> str | None:
    """Return why these header fields are invalid for format v1, or None if they are valid."""
    if version != FORMAT_VERSION:
        return "unsupported chunk format version"
    if flags & ~_KNOWN_FLAGS:
        return "undefined flag bits set"
    if reserved != 0:
        return "reserved header bits set"
    if not 0 <= plaintext_length <= MAX_PLAINTEXT_LENGTH:
        return "plaintext length out of range"
    return None


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The 32-byte public header of a sealed chunk.

    Preconditions: version == FORMAT_VERSION; flags only defined bits;
    0 <= index < 2**64; 0 <= plaintext_length <= MAX_PLAINTEXT_LENGTH;
    len(nonce) == NONCE_SIZE. Spec: docs/format.md, "Header".
    """

    version: int
    flags: ChunkFlags
    index: int
    plaintext_length: int
    nonce: bytes

    def __post_init__(self) -> None:
        problem = _header_problem(self.version, int(self.flags), 0, self.plaintext_length)
        if problem is not None:
            raise ValueError(problem)
        if not 0 <= self.index <= MAX_INDEX:
            raise ValueError("chunk index out of range")
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")

    @property
    def compressed(self) -> bool:
        """Return whether the payload is a zstd frame."""
        return bool(self.flags & ChunkFlags.COMPRESSED)

    def to_bytes(self) -> bytes:
        """Return the header's 32-byte big-endian encoding."""
        return _HEADER.pack(
            CHUNK_MAGIC, self.version, int(self.flags), 0, self.index,
            self.plaintext_length, self.nonce,
        )


def parse_header(sealed: bytes | bytearray | memoryview) -> ChunkHeader:
    """Return the header of a sealed chunk, without any key; raise HeaderError if malformed.

    Checks magic, version, undefined flags, reserved bits and the plaintext
    length bound. Does not authenticate anything: only `ChunkSealer.open` does.
    Precondition: len(sealed) >= HEADER_SIZE. Spec: docs/format.md, "Header".
    """
    view = memoryview(sealed)
    if view.nbytes < HEADER_SIZE:
        raise HeaderError("sealed chunk is shorter than its header")
    magic, version, flags, reserved, index, length, nonce = _HEADER.unpack_from(view)
    if magic != CHUNK_MAGIC:
        raise HeaderError("not a sealed chunk (bad magic)")
    problem = _header_problem(version, flags, reserved, length)
    if problem is not None:
        raise HeaderError(problem)
    return ChunkHeader(version, ChunkFlags(flags), index, length, nonce)


def chunk_aad(session_id: str, header: bytes) -> bytes:
    """Return the GCM associated data binding a chunk header to its session.

    Preconditions: session_id is ASCII, 1 <= len <= 255; len(header) == HEADER_SIZE.
    Spec: docs/format.md, "Associated data".
    """
    sid = _check_session_id(session_id)
    return b"".join((CHUNK_AAD_DOMAIN, bytes((len(sid),)), sid, header))


def _check_session_id(session_id: str) -> bytes:
    """Return the ASCII bytes of `session_id`, or raise ValueError."""
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("session id must be a non-empty string")
    if not session_id.isascii():
        raise ValueError("session id must be ASCII")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise ValueError(f"session id must be at most {MAX_SESSION_ID_LENGTH} bytes")
    return session_id.encode("ascii")


def _check_index(index: int) -> int:
    """Return `index` if 0 <= index < 2**64, else raise ValueError."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise ValueError("chunk index must be an integer in [0, 2**64)")
    return index


@dataclass(frozen=True, slots=True)
class SealedChunk:
    """A sealed chunk as stored, with the facts the metadata store records.

    leaf_hash == SHA-256(0x00 || data) (RFC 9162 section 2.1.1).
    """

    index: int
    data: bytes | memoryview  # a memoryview into the caller's buffer after `seal_into`
    plaintext_length: int
    compressed: bool
    leaf_hash: bytes

    @property
    def sealed_length(self) -> int:
        """Return len(data): header + payload + tag."""
        return len(self.data)


# zstd contexts are not thread-safe; the services seal and open from worker
# threads, so each thread keeps its own compressor per level and one decompressor.
_zstd_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """Return this thread's compressor for `level` (writes the content size)."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_zstd_local, "cctx", None)
    if cache is None:
        cache = _zstd_local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    """Return this thread's decompressor."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_zstd_local, "dctx", None)
    if dctx is None:
        dctx = _zstd_local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _compress_if_smaller(view: memoryview, level: int) -> tuple[bytes | memoryview, ChunkFlags]:
    """Return (zstd frame, COMPRESSED) if it is shorter than `view`, else (view, NONE).

    A helper of its own so a rejected frame is freed before encryption allocates.
    """
    if view.nbytes:
        packed = _compressor(level).compress(view)
        if len(packed) < view.nbytes:
            return packed, ChunkFlags.COMPRESSED
    return view, ChunkFlags.NONE


class _Filler:
    """A write-only sink that fills `target` from its start; a write past its end raises
    _NotSmaller (zstd's stream writer hands it the frame piece by piece)."""

    __slots__ = ("filled", "target")

    def __init__(self, target: memoryview) -> None:
        self.target, self.filled = target, 0

    def write(self, data: bytes) -> int:
        end = self.filled + len(data)
        if end > self.target.nbytes:
            raise _NotSmaller
        self.target[self.filled:end] = data
        self.filled = end
        return len(data)


class _NotSmaller(Exception):  # noqa: N818 - a signal inside this module, never raised out
    """The zstd frame would not be shorter than its plaintext."""


def _compress_into(view: memoryview, level: int, target: memoryview) -> int | None:
    """Return the length of the zstd frame of `view` written at the start of `target`, or
    None if it is not strictly shorter than `view` (target's content is then unspecified).

    The frame goes straight to `target` (len(target) >= len(view) - 1) instead of into
    a new buffer as long as the plaintext (one-shot compression), which an incompressible
    chunk fills: memory outside the processor's budget (README, "Memory: one budget for
    the whole processor").  A compression given up midway leaves the thread's compressor
    to the next frame, which starts afresh.
    """
    sink = _Filler(target[:view.nbytes - 1])
    writer = _compressor(level).stream_writer(cast("IO[bytes]", sink), size=view.nbytes)
    try:  # not closed: closing would append another (empty) frame
        writer.write(view)
        writer.flush(zstandard.FLUSH_FRAME)
    except _NotSmaller:
        return None
    return sink.filled


def sealed_length_bound(plaintext_length: int) -> int:
    """Return the longest sealed chunk a plaintext of this length can become.

    zstd output is kept only when strictly shorter, so the payload is at most the
    plaintext.  Size a `ChunkSealer.seal_into` buffer with this.
    """
    return HEADER_SIZE + plaintext_length + TAG_SIZE


def _seal_with_nonce(
    aead: AESGCM,
    *,
    session_id: str,
    index: int,
    plaintext: bytes | bytearray | memoryview,
    nonce: bytes,
    zstd_level: int,
    out: bytearray | memoryview | None = None,
) -> SealedChunk:
    """Return `plaintext` sealed under an explicit nonce (format v1), into `out` if given.

    Private: only `ChunkSealer.seal`/`seal_into` (with a fresh random nonce) and the
    test that reproduces the worked example of docs/format.md may call it. Reusing a
    nonce under one key breaks GCM.
    Preconditions: 0 <= index < 2**64; len(plaintext) <= MAX_PLAINTEXT_LENGTH;
    len(nonce) == NONCE_SIZE; len(out) >= sealed_length_bound(len(plaintext)) if given.
    Spec: docs/format.md, "Sealing".
    """
    _check_index(index)
    view = memoryview(plaintext).cast("B")
    length = view.nbytes
    if length > MAX_PLAINTEXT_LENGTH:
        raise ValueError(f"chunk plaintext must be at most {MAX_PLAINTEXT_LENGTH} bytes")
    if out is not None and len(out) < sealed_length_bound(length):
        raise ValueError(f"the output buffer must hold {sealed_length_bound(length)} bytes")
    data: bytes | memoryview
    if out is None:
        payload, flags = _compress_if_smaller(view, zstd_level)
        header = ChunkHeader(FORMAT_VERSION, flags, index, length, nonce).to_bytes()
        ct_and_tag = aead.encrypt(nonce, payload, chunk_aad(session_id, header))
        data = b"".join((header, ct_and_tag))
        del ct_and_tag, payload  # free before hashing: keeps about one chunk alive, not three
    else:
        data, flags = _seal_in_place(aead, memoryview(out), session_id=session_id,
                                     index=index, view=view, nonce=nonce, zstd_level=zstd_level)
    return SealedChunk(index, data, length, bool(flags), leaf_hash(data))


def _seal_in_place(aead: AESGCM, out: memoryview, *, session_id: str, index: int,
                   view: memoryview, nonce: bytes, zstd_level: int
                   ) -> tuple[memoryview, ChunkFlags]:
    """Return the view of `out` the chunk was sealed into, and its flags.

    The zstd frame, if shorter, is written where its ciphertext goes and encrypted there
    in place (GCM takes the same buffer as input and output); otherwise the plaintext is
    encrypted from `view`.  Precondition: len(out) >= sealed_length_bound(len(view)).
    """
    length = view.nbytes
    body = out[HEADER_SIZE:]
    packed = _compress_into(view, zstd_level, body) if length else None
    payload = view if packed is None else body[:packed]
    flags = ChunkFlags.NONE if packed is None else ChunkFlags.COMPRESSED
    header = ChunkHeader(FORMAT_VERSION, flags, index, length, nonce).to_bytes()
    target = out[:HEADER_SIZE + payload.nbytes + TAG_SIZE]
    target[:HEADER_SIZE] = header
    aead.encrypt_into(nonce, payload, chunk_aad(session_id, header), target[HEADER_SIZE:])
    return target, flags


class ChunkSealer:
    """Seal and open the chunks of one session under its data key.

    Preconditions: len(data_key) == 32; session_id ASCII with
    1 <= len(session_id) <= 255; 1 <= zstd_level <= 19.
    Thread-safe: seal and open may run concurrently from several threads.
    Spec: docs/format.md, "Sealed chunk format v1".
    """

    __slots__ = ("_aead", "_session_id", "_zstd_level")

    def __init__(
        self, data_key: bytes, *, session_id: str, zstd_level: int = DEFAULT_ZSTD_LEVEL
    ) -> None:
        if not isinstance(data_key, bytes | bytearray) or len(data_key) != KEY_SIZE:
            raise ValueError(f"data key must be exactly {KEY_SIZE} bytes")
        if isinstance(zstd_level, bool) or not isinstance(zstd_level, int):
            raise ValueError("zstd level must be an integer")
        if not MIN_ZSTD_LEVEL <= zstd_level <= MAX_ZSTD_LEVEL:
            raise ValueError(f"zstd level must be between {MIN_ZSTD_LEVEL} and {MAX_ZSTD_LEVEL}")
        _check_session_id(session_id)
        self._aead = AESGCM(bytes(data_key))
        self._session_id = session_id
        self._zstd_level = zstd_level

    def __repr__(self) -> str:
        return f"ChunkSealer(session_id={self._session_id!r}, zstd_level={self._zstd_level})"

    @property
    def session_id(self) -> str:
        """Return the session this sealer binds chunks to."""
        return self._session_id

    @property
    def zstd_level(self) -> int:
        """Return the zstd compression level used by `seal`."""
        return self._zstd_level

    def seal(self, plaintext: bytes | bytearray | memoryview, *, index: int) -> SealedChunk:
        """Return `plaintext` compressed if that shrinks it, then sealed as chunk `index`.

        A fresh 96-bit random nonce is drawn for every call.
        Preconditions: 0 <= index < 2**64; len(plaintext) <= 16 MiB.
        Spec: docs/format.md, "Sealing".
        """
        return _seal_with_nonce(
            self._aead, session_id=self._session_id, index=index, plaintext=plaintext,
            nonce=os.urandom(NONCE_SIZE), zstd_level=self._zstd_level,
        )

    def seal_into(self, plaintext: bytes | bytearray | memoryview, *, index: int,
                  out: bytearray | memoryview) -> SealedChunk:
        """Seal like `seal`, writing the sealed bytes to the start of `out`.

        The result's `data` is a memoryview of `out`: no sealed copy is allocated, so a
        caller can reuse a few buffers for every chunk (bounded memory, no allocator
        churn).  `out` must not be written again while the result is in use.
        Preconditions: those of `seal`; len(out) >= sealed_length_bound(len(plaintext)).
        """
        return _seal_with_nonce(
            self._aead, session_id=self._session_id, index=index, plaintext=plaintext,
            nonce=os.urandom(NONCE_SIZE), zstd_level=self._zstd_level, out=out,
        )

    def open(self, sealed: bytes | bytearray | memoryview, *, index: int,
             scratch: bytearray | memoryview | None = None) -> bytes:
        """Return the plaintext of chunk `index`; raise OpenError on any failure.

        Every failure (truncated, bad header, wrong index, session, key or nonce,
        tag mismatch, bad zstd frame, length mismatch) raises exactly OpenError
        with one fixed message.  `scratch`, a reusable buffer at least as long as
        `sealed`, receives the decrypted payload, which saves allocating it for
        every chunk; its content afterwards is unspecified.
        Precondition: 0 <= index < 2**64. Spec: docs/format.md, "Opening".
        """
        _check_index(index)
        view = memoryview(sealed).cast("B")
        if view.nbytes < HEADER_SIZE + TAG_SIZE:
            raise OpenError(_OPEN_FAILED)
        try:
            header = parse_header(view)
        except HeaderError:
            raise OpenError(_OPEN_FAILED) from None
        payload_length = view.nbytes - HEADER_SIZE - TAG_SIZE
        if header.index != index or not _payload_length_ok(header, payload_length):
            raise OpenError(_OPEN_FAILED)
        aad = chunk_aad(self._session_id, view[:HEADER_SIZE].tobytes())
        payload: bytes | memoryview
        try:
            if scratch is None:
                payload = self._aead.decrypt(header.nonce, view[HEADER_SIZE:], aad)
            else:
                if len(scratch) < view.nbytes:
                    raise ValueError("the scratch buffer must be as long as the sealed chunk")
                payload = memoryview(scratch)[:payload_length]
                self._aead.decrypt_into(header.nonce, view[HEADER_SIZE:], aad, payload)
        except InvalidTag:
            raise OpenError(_OPEN_FAILED) from None
        if not header.compressed:
            return payload if isinstance(payload, bytes) else payload.tobytes()
        return _decompress_exact(payload, header.plaintext_length)


def _payload_length_ok(header: ChunkHeader, payload_length: int) -> bool:
    """Return whether the payload length is possible for this header.

    Stored raw: payload == plaintext. Stored compressed: 0 < payload < plaintext,
    because `seal` keeps the zstd form only when it is strictly smaller.
    """
    if header.compressed:
        return 0 < payload_length < header.plaintext_length
    return payload_length == header.plaintext_length


def _decompress_exact(frame: bytes | memoryview, length: int) -> bytes:
    """Return the content of the zstd frame `frame`; raise OpenError unless it is `length` bytes.

    The frame must declare its content size, which must equal `length` (<= 16 MiB)
    before anything is decompressed, so a hostile frame cannot allocate more; the
    frame must also end exactly at the end of the payload.  One-shot decompression
    (unlike `decompressobj`) releases the GIL, so replay's event loop keeps moving
    bytes while worker threads decompress side by side (README has the figures).
    """
    try:
        if zstandard.frame_content_size(frame) != length:
            raise OpenError(_OPEN_FAILED)
        out = _decompressor().decompress(frame, max_output_size=length,
                                         allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise OpenError(_OPEN_FAILED) from exc
    if len(out) != length:
        raise OpenError(_OPEN_FAILED)
    return out
