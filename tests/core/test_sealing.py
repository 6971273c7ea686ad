"""Sealed-chunk format v1: round trips, the compression rule, and every way opening must fail.

Every failure to open must raise exactly `OpenError` with its one fixed message;
cryptography's `InvalidTag` and zstandard's `ZstdError` must never escape.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from sessions.core import (
    CIPHER_NAME,
    FORMAT_VERSION,
    HEADER_SIZE,
    TAG_SIZE,
    ChunkFlags,
    ChunkHeader,
    ChunkSealer,
    HeaderError,
    OpenError,
    SealedChunk,
    parse_header,
    sealed_length_bound,
)
from sessions.core._sealing import CHUNK_MAGIC, _seal_with_nonce, chunk_aad

MiB = 1024 * 1024
KEY = bytes(range(32))
SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
OTHER_SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M9"
OPEN_MESSAGE = "sealed chunk failed to open"


def compressible(n: int) -> bytes:
    return (b"flat colour region " * (n // 19 + 1))[:n]


def incompressible(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)  # noqa: S311 - test data


def assert_open_fails(call: Callable[[], object]) -> None:
    """Assert `call` raises exactly OpenError with the fixed message, hiding third-party errors."""
    with pytest.raises(Exception) as info:  # noqa: B017 - exact type asserted below
        call()
    exc = info.value
    assert type(exc) is OpenError, f"{type(exc).__name__} escaped: {exc!r}"
    assert str(exc) == OPEN_MESSAGE
    assert not isinstance(exc.__cause__, InvalidTag)


@pytest.fixture
def sealer() -> ChunkSealer:
    return ChunkSealer(KEY, session_id=SID)


# -- constants and construction ----------------------------------------------------------


def test_constants() -> None:
    assert (HEADER_SIZE, TAG_SIZE, FORMAT_VERSION, CIPHER_NAME) == (32, 16, 1, "AES-256-GCM")
    assert len(CHUNK_MAGIC) == 4


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33), "k" * 32, None],
                         ids=["empty", "aes128", "31", "33", "str", "none"])
def test_sealer_rejects_wrong_key(key: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ChunkSealer(key, session_id=SID)  # type: ignore[arg-type]


@pytest.mark.parametrize("sid", ["", "sé", "x" * 256], ids=["empty", "non-ascii", "256"])
def test_sealer_rejects_bad_session_id(sid: str) -> None:
    with pytest.raises(ValueError, match="session id"):
        ChunkSealer(KEY, session_id=sid)


@pytest.mark.parametrize("level", [0, 20, -1, True, 3.0])
def test_sealer_rejects_bad_zstd_level(level: object) -> None:
    with pytest.raises(ValueError, match="zstd level"):
        ChunkSealer(KEY, session_id=SID, zstd_level=level)  # type: ignore[arg-type]


def test_session_id_of_255_bytes_is_accepted() -> None:
    s = ChunkSealer(KEY, session_id="x" * 255)
    assert s.open(s.seal(b"abc", index=0).data, index=0) == b"abc"


def test_seal_takes_no_nonce_and_draws_a_fresh_one(sealer: ChunkSealer) -> None:
    assert "nonce" not in inspect.signature(ChunkSealer.seal).parameters
    a, b = sealer.seal(b"same", index=0), sealer.seal(b"same", index=0)
    assert parse_header(a.data).nonce != parse_header(b.data).nonce
    assert a.data != b.data and a.leaf_hash != b.leaf_hash


def test_repr_shows_no_key(sealer: ChunkSealer) -> None:
    assert KEY.hex() not in repr(sealer) and SID in repr(sealer)


@pytest.mark.parametrize("index", [-1, 2**64, True])
def test_seal_and_open_reject_bad_index(sealer: ChunkSealer, index: int) -> None:
    with pytest.raises(ValueError, match="index"):
        sealer.seal(b"x", index=index)
    with pytest.raises(ValueError, match="index"):
        sealer.open(sealer.seal(b"x", index=0).data, index=index)


def test_seal_rejects_plaintext_over_16_mib(sealer: ChunkSealer) -> None:
    with pytest.raises(ValueError, match="at most"):
        sealer.seal(bytearray(16 * MiB + 1), index=0)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"\x00", b"hello lucid", compressible(MiB),
                                       incompressible(MiB)],
                         ids=["empty", "one-byte", "tiny", "1MiB-compressible", "1MiB-random"])
def test_round_trip(sealer: ChunkSealer, plaintext: bytes) -> None:
    chunk = sealer.seal(plaintext, index=3)
    assert isinstance(chunk, SealedChunk)
    assert (chunk.index, chunk.plaintext_length) == (3, len(plaintext))
    assert chunk.sealed_length == len(chunk.data)
    assert chunk.leaf_hash == hashlib.sha256(b"\x00" + chunk.data).digest()
    assert sealer.open(chunk.data, index=3) == plaintext
    assert sealer.open(memoryview(chunk.data), index=3) == plaintext
    assert sealer.open(bytearray(chunk.data), index=3) == plaintext


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_seal_accepts_any_buffer(sealer: ChunkSealer, kind: Callable[[bytes], object]) -> None:
    for data in (compressible(5000), incompressible(5000)):
        chunk = sealer.seal(kind(data), index=0)  # type: ignore[arg-type]
        assert sealer.open(chunk.data, index=0) == data


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 300_000), seed=st.integers(0, 2**32), index=st.integers(0, 2**64 - 1),
       mix=st.sampled_from(["random", "flat", "half"]))
def test_round_trip_random_sizes(size: int, seed: int, index: int, mix: str) -> None:
    rnd = incompressible(size, seed)
    data = {"random": rnd, "flat": compressible(size),
            "half": compressible(size // 2) + rnd[: size - size // 2]}[mix]
    s = ChunkSealer(KEY, session_id=SID)
    chunk = s.seal(data, index=index)
    assert s.open(chunk.data, index=index) == data
    header = parse_header(chunk.data)
    assert (header.index, header.plaintext_length, header.compressed) == (
        index, size, chunk.compressed)
    payload = chunk.sealed_length - HEADER_SIZE - TAG_SIZE
    assert payload < size if chunk.compressed else payload == size


def test_compressible_chunk_is_compressed_and_shrinks(sealer: ChunkSealer) -> None:
    chunk = sealer.seal(compressible(MiB), index=0)
    assert chunk.compressed and parse_header(chunk.data).flags == ChunkFlags.COMPRESSED
    assert chunk.sealed_length < MiB // 10


@pytest.mark.parametrize("plaintext", [b"", b"a", b"hello lucid", incompressible(MiB)],
                         ids=["empty", "one-byte", "tiny", "1MiB-random"])
def test_incompressible_chunk_is_stored_raw(sealer: ChunkSealer, plaintext: bytes) -> None:
    chunk = sealer.seal(plaintext, index=0)
    assert not chunk.compressed and parse_header(chunk.data).flags == ChunkFlags.NONE
    assert chunk.sealed_length == HEADER_SIZE + len(plaintext) + TAG_SIZE


def test_zstd_level_is_used() -> None:
    data = compressible(200_000) + incompressible(1000)
    fast = ChunkSealer(KEY, session_id=SID, zstd_level=1).seal(data, index=0)
    best = ChunkSealer(KEY, session_id=SID, zstd_level=19).seal(data, index=0)
    assert fast.compressed and best.compressed and best.sealed_length <= fast.sealed_length


def test_concurrent_seal_and_open_from_threads() -> None:
    sealers = [ChunkSealer(os.urandom(32), session_id=f"s{i}", zstd_level=1 + i) for i in range(4)]
    inputs = [compressible(50_000 + i) + incompressible(i * 97, i) for i in range(64)]

    def work(i: int) -> bool:
        s = sealers[i % 4]
        return s.open(s.seal(inputs[i], index=i).data, index=i) == inputs[i]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(work, range(64)))


# -- header ----------------------------------------------------------------------------------


def test_parse_header_reads_every_field(sealer: ChunkSealer) -> None:
    chunk = sealer.seal(compressible(10_000), index=2**40 + 5)
    h = parse_header(chunk.data)
    assert h == ChunkHeader(1, ChunkFlags.COMPRESSED, 2**40 + 5, 10_000, chunk.data[20:32])
    assert h.to_bytes() == chunk.data[:HEADER_SIZE]


def _with_header_field(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


HEADER_MUTATIONS = {
    "bad-magic": (0, b"LUCX"),
    "version-0": (4, b"\x00"),
    "version-2": (4, b"\x02"),
    "undefined-flag-bit-1": (5, b"\x02"),
    "undefined-flag-bit-7": (5, b"\x80"),
    "reserved-set": (6, b"\x00\x01"),
    "plaintext-length-over-16MiB": (16, struct.pack(">I", 16 * MiB + 1)),
}


@pytest.mark.parametrize("mutation", list(HEADER_MUTATIONS))
def test_parse_header_rejects(sealer: ChunkSealer, mutation: str) -> None:
    offset, new = HEADER_MUTATIONS[mutation]
    bad = _with_header_field(sealer.seal(b"abc", index=0).data, offset, new)
    with pytest.raises(HeaderError):
        parse_header(bad)
    assert_open_fails(lambda: sealer.open(bad, index=0))


@pytest.mark.parametrize("length", range(HEADER_SIZE))
def test_parse_header_rejects_short_blob(sealer: ChunkSealer, length: int) -> None:
    with pytest.raises(HeaderError):
        parse_header(sealer.seal(b"abc", index=0).data[:length])


def test_chunk_header_validates_fields() -> None:
    nonce = bytes(12)
    for bad in [dict(version=2), dict(flags=ChunkFlags(4)), dict(index=-1), dict(index=2**64),
                dict(plaintext_length=16 * MiB + 1), dict(nonce=bytes(11))]:
        fields: dict[str, object] = dict(version=1, flags=ChunkFlags.NONE, index=0,
                                         plaintext_length=0, nonce=nonce)
        fields.update(bad)
        with pytest.raises(ValueError):
            ChunkHeader(**fields)  # type: ignore[arg-type]


# -- opening must fail -------------------------------------------------------------------------


@pytest.fixture(params=["compressed", "raw"])
def sealed(request: pytest.FixtureRequest, sealer: ChunkSealer) -> SealedChunk:
    data = compressible(4000) if request.param == "compressed" else incompressible(4000)
    chunk = sealer.seal(data, index=5)
    assert chunk.compressed == (request.param == "compressed")
    return chunk


def test_wrong_session_id_fails(sealed: SealedChunk) -> None:
    assert_open_fails(lambda: ChunkSealer(KEY, session_id=OTHER_SID).open(sealed.data, index=5))


def test_wrong_index_fails(sealer: ChunkSealer, sealed: SealedChunk) -> None:
    for index in (0, 4, 6, 2**64 - 1):
        assert_open_fails(lambda index=index: sealer.open(sealed.data, index=index))


def test_wrong_key_fails(sealed: SealedChunk) -> None:
    other = bytes([KEY[0] ^ 1]) + KEY[1:]
    for key in (other, os.urandom(32)):
        wrong = ChunkSealer(key, session_id=SID)
        assert_open_fails(lambda wrong=wrong: wrong.open(sealed.data, index=5))


@pytest.mark.parametrize("offset", range(HEADER_SIZE))
def test_every_modified_header_byte_fails(sealer: ChunkSealer, sealed: SealedChunk,
                                          offset: int) -> None:
    for bit in (0x01, 0x80):
        bad = bytearray(sealed.data)
        bad[offset] ^= bit
        assert_open_fails(lambda bad=bad: sealer.open(bytes(bad), index=5))


def test_index_rewritten_in_header_fails(sealer: ChunkSealer, sealed: SealedChunk) -> None:
    moved = _with_header_field(sealed.data, 8, struct.pack(">Q", 6))
    assert_open_fails(lambda: sealer.open(moved, index=6))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_modified_ciphertext_byte_fails(sealer: ChunkSealer, sealed: SealedChunk,
                                        where: str) -> None:
    end = sealed.sealed_length - TAG_SIZE
    offset = {"first": HEADER_SIZE, "middle": (HEADER_SIZE + end) // 2, "last": end - 1}[where]
    bad = bytearray(sealed.data)
    bad[offset] ^= 0x01
    assert_open_fails(lambda: sealer.open(bytes(bad), index=5))


@pytest.mark.parametrize("offset", range(-TAG_SIZE, 0))
def test_modified_tag_byte_fails(sealer: ChunkSealer, sealed: SealedChunk, offset: int) -> None:
    bad = bytearray(sealed.data)
    bad[offset] ^= 0x40
    assert_open_fails(lambda: sealer.open(bytes(bad), index=5))


@pytest.mark.parametrize("plaintext", [b"", b"hello lucid"], ids=["empty", "tiny"])
def test_every_truncation_fails(sealer: ChunkSealer, plaintext: bytes) -> None:
    data = sealer.seal(plaintext, index=1).data
    for length in range(len(data)):
        assert_open_fails(lambda length=length: sealer.open(data[:length], index=1))
    for length in range(HEADER_SIZE + TAG_SIZE + 1):
        assert_open_fails(lambda length=length: sealer.open(bytes(length), index=1))


def test_truncated_or_extended_large_chunk_fails(sealer: ChunkSealer, sealed: SealedChunk) -> None:
    for bad in (sealed.data[:-1], sealed.data[:-TAG_SIZE], sealed.data + b"\x00",
                sealed.data[:HEADER_SIZE] + sealed.data[HEADER_SIZE + 1:]):
        assert_open_fails(lambda bad=bad: sealer.open(bad, index=5))


def test_splicing_a_chunk_into_another_session_fails() -> None:
    # Even under the same data key, the session id in the AAD keeps sessions apart.
    for key_b in (KEY, os.urandom(32)):
        a = ChunkSealer(KEY, session_id=SID)
        b = ChunkSealer(key_b, session_id=OTHER_SID)
        chunks_b = [b.seal(f"B{i}".encode() * 100, index=i) for i in range(3)]
        from_a = a.seal(b"A1" * 100, index=1)
        spliced = [chunks_b[0].data, from_a.data, chunks_b[2].data]
        assert b.open(spliced[0], index=0) == b"B0" * 100
        assert_open_fails(lambda spliced=spliced, b=b: b.open(spliced[1], index=1))


def test_swapping_two_chunks_fails(sealer: ChunkSealer) -> None:
    c0, c1 = sealer.seal(b"first", index=0), sealer.seal(b"second", index=1)
    assert_open_fails(lambda: sealer.open(c1.data, index=0))
    assert_open_fails(lambda: sealer.open(c0.data, index=1))


# -- authenticated but malformed payloads: the zstd boundary -----------------------------------


def _forge(payload: bytes, *, plaintext_length: int, flags: ChunkFlags, index: int = 0) -> bytes:
    """Return a chunk sealed by hand under KEY/SID, so its tag verifies whatever the payload."""
    nonce = os.urandom(12)
    header = ChunkHeader(1, flags, index, plaintext_length, nonce).to_bytes()
    return header + AESGCM(KEY).encrypt(nonce, payload, chunk_aad(SID, header))


def _frame(data: bytes, **kwargs: object) -> bytes:
    return zstandard.ZstdCompressor(level=3, **kwargs).compress(data)  # type: ignore[arg-type]


FORGED = {
    "not-a-zstd-frame": (b"\x00" * 50, 1000),
    "frame-longer-than-header-says": (_frame(b"a" * 2000), 1000),
    "frame-shorter-than-header-says": (_frame(b"a" * 500), 1000),
    "frame-without-content-size": (_frame(b"a" * 1000, write_content_size=False), 1000),
    "trailing-bytes-after-frame": (_frame(b"a" * 1000) + b"junk", 1000),
    "two-frames": (_frame(b"a" * 500) + _frame(b"a" * 500), 1000),
    "truncated-frame": (_frame(incompressible(600) + b"a" * 400)[:-3], 1000),
    "compressed-not-shorter": (_frame(b"a" * 20) + b"\x00" * 20, 20),
    "compressed-empty-payload": (b"", 10),
}


@pytest.mark.parametrize("scratch", [False, True], ids=["own-payload", "scratch-payload"])
@pytest.mark.parametrize("case", list(FORGED))
def test_authenticated_but_bad_compressed_payload_fails(sealer: ChunkSealer, case: str,
                                                        scratch: bool) -> None:
    payload, length = FORGED[case]
    forged = _forge(payload, plaintext_length=length, flags=ChunkFlags.COMPRESSED)
    buf = bytearray(len(forged)) if scratch else None
    assert_open_fails(lambda: sealer.open(forged, index=0, scratch=buf))


def test_raw_payload_length_must_match_header(sealer: ChunkSealer) -> None:
    forged = _forge(b"x" * 10, plaintext_length=11, flags=ChunkFlags.NONE)
    assert_open_fails(lambda: sealer.open(forged, index=0))
    good = _forge(b"x" * 11, plaintext_length=11, flags=ChunkFlags.NONE)
    assert sealer.open(good, index=0) == b"x" * 11


def test_hand_forged_valid_compressed_chunk_opens(sealer: ChunkSealer) -> None:
    forged = _forge(_frame(b"a" * 1000), plaintext_length=1000, flags=ChunkFlags.COMPRESSED)
    assert sealer.open(forged, index=0) == b"a" * 1000


def test_seal_with_nonce_is_deterministic() -> None:
    kwargs = dict(session_id=SID, index=7, plaintext=b"hello lucid", nonce=bytes(12), zstd_level=3)
    a = _seal_with_nonce(AESGCM(KEY), **kwargs)  # type: ignore[arg-type]
    b = _seal_with_nonce(AESGCM(KEY), **kwargs)  # type: ignore[arg-type]
    assert a == b
    assert ChunkSealer(KEY, session_id=SID).open(a.data, index=7) == b"hello lucid"


# --- seal_into: the same chunk, written into a caller's reusable buffer -------------------


@pytest.mark.parametrize("plaintext", [b"", b"x", compressible(3 * MiB), incompressible(MiB + 7)],
                         ids=["empty", "one-byte", "compressible", "incompressible"])
def test_seal_into_writes_an_openable_chunk_into_the_buffer(plaintext: bytes) -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    out = bytearray(b"\xaa" * (sealed_length_bound(len(plaintext)) + 100))
    sealed = sealer.seal_into(plaintext, index=5, out=out)
    assert isinstance(sealed.data, memoryview) and sealed.data.obj is out  # no copy made
    n = sealed.sealed_length
    assert bytes(out[:n]) == bytes(sealed.data)
    assert out[n:] == b"\xaa" * (len(out) - n)  # nothing written past the chunk
    assert sealed.leaf_hash == hashlib.sha256(b"\x00" + bytes(sealed.data)).digest()
    assert sealer.open(sealed.data, index=5) == plaintext
    reference = sealer.seal(plaintext, index=5)  # same layout as seal, but a fresh nonce
    assert (sealed.compressed, sealed.plaintext_length) == (
        reference.compressed, reference.plaintext_length)
    # the zstd frame is streamed into `out`, so it may differ from seal's by a few bytes
    assert abs(n - reference.sealed_length) <= 16
    if not sealed.compressed:
        assert n == reference.sealed_length


@pytest.mark.parametrize("plaintext", [compressible(3 * MiB), incompressible(MiB + 7)],
                         ids=["compressible", "incompressible"])
def test_sealing_in_place_is_sealing_from_another_buffer(plaintext: bytes) -> None:
    """seal_into encrypts the zstd frame where it streamed it (input and output the same
    buffer): the ciphertext and tag are those of encrypting that frame from a separate
    buffer, so a library that stopped allowing it in place fails here."""
    nonce = bytes(range(12))
    out = bytearray(sealed_length_bound(len(plaintext)))
    sealed = _seal_with_nonce(AESGCM(KEY), session_id=SID, index=3, plaintext=plaintext,
                              nonce=nonce, zstd_level=3, out=out)
    header, body = bytes(sealed.data[:32]), bytes(sealed.data[32:])
    payload = AESGCM(KEY).decrypt(nonce, body, chunk_aad(SID, header))
    assert AESGCM(KEY).encrypt(nonce, payload, chunk_aad(SID, header)) == body
    frame_or_plain = zstandard.ZstdDecompressor().decompress(payload) if sealed.compressed \
        else payload
    assert frame_or_plain == plaintext


def test_seal_into_a_reused_buffer_leaves_no_trace_of_the_previous_chunk() -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    out = bytearray(sealed_length_bound(MiB))
    first = sealer.seal_into(incompressible(MiB), index=0, out=out)
    kept = bytes(first.data)
    second = sealer.seal_into(compressible(MiB), index=1, out=out)
    assert sealer.open(second.data, index=1) == compressible(MiB)
    assert sealer.open(kept, index=0) == incompressible(MiB)


def test_seal_into_refuses_a_buffer_too_small_for_the_worst_case() -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    plaintext = compressible(MiB)  # would compress, but the bound is what counts
    with pytest.raises(ValueError, match="output buffer"):
        sealer.seal_into(plaintext, index=0, out=bytearray(sealed_length_bound(MiB) - 1))


# --- open with a scratch buffer: the payload is decrypted into the caller's buffer ----------


@pytest.mark.parametrize("plaintext", [b"", b"x", compressible(2 * MiB), incompressible(MiB + 3)],
                         ids=["empty", "one-byte", "compressible", "incompressible"])
def test_open_with_scratch_returns_the_same_plaintext_as_bytes(plaintext: bytes) -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    sealed = sealer.seal(plaintext, index=9).data
    scratch = bytearray(len(sealed) + 10)
    opened = sealer.open(sealed, index=9, scratch=scratch)
    assert type(opened) is bytes and opened == plaintext
    scratch[:] = b"\0" * len(scratch)  # the result does not live in the scratch buffer
    assert opened == plaintext


def test_open_with_scratch_fails_exactly_like_open() -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    sealed = bytearray(sealer.seal(compressible(MiB), index=1).data)
    sealed[-1] ^= 1
    with pytest.raises(OpenError, match=OPEN_MESSAGE):
        sealer.open(sealed, index=1, scratch=bytearray(len(sealed)))
    with pytest.raises(OpenError, match=OPEN_MESSAGE):
        sealer.open(sealed[:-1], index=1, scratch=bytearray(len(sealed)))


def test_open_refuses_a_scratch_buffer_shorter_than_the_chunk() -> None:
    sealer = ChunkSealer(KEY, session_id=SID)
    sealed = sealer.seal(incompressible(1000), index=0).data
    with pytest.raises(ValueError, match="scratch"):
        sealer.open(sealed, index=0, scratch=bytearray(len(sealed) - 1))
