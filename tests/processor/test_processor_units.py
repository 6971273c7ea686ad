"""The processor's pure functions: Range, chunk spans, sampling, check-and-open.

`parse_range` is checked against a naive RFC 9110 §14.1.2 model and `chunk_span` against a
brute-force overlap scan, both written here independently of the code under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sessions.common.errors import ChunkCorrupt, RangeNotSatisfiable
from sessions.contract.operations import reads
from sessions.contract.storage import ChunkModel
from sessions.core import ChunkSealer, leaf_hash
from sessions.processor.buffers import ChunkBuffers, MemoryBudget
from sessions.processor.readback import (
    BadChunk,
    ByteRange,
    ChunkFacts,
    ChunkReader,
    ReadResources,
    check_and_open,
    chunk_span,
    parse_range,
    sample_indexes,
)
from sessions.processor.storage_client import ChunkRow, StorageClient

SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
OTHER_SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M9"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ZERO_HASH = b"\x00" * 32


# ------------------------------------------------------------------------------ parse_range


def rfc_range(first: int | None, last: int | None, size: int) -> ByteRange | str | None:
    """Return the RFC 9110 §14.1.2 meaning of one range-spec: a range, "416" or None (ignored)."""
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            return "416"  # a zero suffix-length selects nothing
        return ByteRange(max(0, size - last), size)
    if last is not None and last < first:
        return None  # an invalid range-spec: the header is ignored (§14.2)
    if first >= size:
        return "416"
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end + 1)


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-0", 10, (0, 1)),
    ("bytes=0-9", 10, (0, 10)),
    ("bytes=2-5", 10, (2, 6)),
    ("bytes=9-9", 10, (9, 10)),
    ("bytes=5-", 10, (5, 10)),
    ("bytes=0-", 10, (0, 10)),
    ("bytes=-3", 10, (7, 10)),
    ("bytes=-10", 10, (0, 10)),
    ("bytes=-11", 10, (0, 10)),
    ("bytes=-99999999999999999999", 10, (0, 10)),
    ("bytes=0-10", 10, (0, 10)),
    ("bytes=3-99999999999999999999", 10, (3, 10)),
    ("  bytes=1-2 \t", 10, (1, 3)),
    ("bytes=0-0", 1, (0, 1)),
    ("bytes=-1", 1, (0, 1)),
    ("bytes=4194303-4194304", 8 * 1024 * 1024, (4194303, 4194305)),
], ids=["first-byte", "all-explicit", "middle", "last-byte", "open-end", "from-zero",
        "suffix", "suffix-equal-size", "suffix-larger", "huge-suffix", "end-clamped-by-one",
        "end-clamped-far", "whitespace", "size-one", "suffix-size-one", "chunk-boundary"])
def test_satisfiable_ranges(header: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(header, size=size) == ByteRange(*expected)


def test_no_header_means_the_whole_stream() -> None:
    assert parse_range(None, size=10) is None
    assert parse_range(None, size=0) is None


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=10-", 10),
    ("bytes=10-10", 10),
    ("bytes=11-20", 10),
    ("bytes=99999999999999999999-", 10),
    ("bytes=-0", 10),
    ("bytes=0-", 0),
    ("bytes=0-0", 0),
    ("bytes=-5", 0),
    ("bytes=10-11,", 10),
], ids=["start-at-size", "single-at-size", "past-size", "huge-start", "zero-suffix",
        "empty-stream-open", "empty-stream-closed", "empty-stream-suffix",
        "trailing-comma"])
def test_unsatisfiable_ranges_say_the_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size=size)
    err = info.value
    assert (err.status, err.code, err.extra) == (416, "range_not_satisfiable", {"size": size})


@pytest.mark.parametrize("header", [
    "bytes=5-2",
    "bytes=1-0",
    "bytes=",
    "bytes=-",
    "bytes=a-b",
    "bytes=0x1-2",
    "bytes=1.5-2",
    "bytes=+1-2",
    "bytes=--1",
    "bytes=0-1-2",
    "bytes=-1-",
    "bytes = 0-1",
    "bytes=0 -1",
    "items=0-1",
    "bytes 0-1",
    "0-1",
    "",
    "bytes=0-1,3-4",
    "bytes=0-1, 3-4",
    "bytes=-1,-2",
    "bytes=0-1,abc",
    "bytes=20-30,40-50",
], ids=["end-before-start", "end-before-start-by-one", "empty-spec", "bare-dash", "letters",
        "hex", "fraction", "plus-sign", "double-dash", "three-parts", "suffix-and-open",
        "spaced-equals", "space-before-dash", "other-unit", "no-equals",
        "no-unit", "empty", "multi", "multi-spaced", "multi-suffix", "multi-one-invalid",
        "multi-unsatisfiable"])
def test_invalid_or_multiple_ranges_are_ignored(header: str) -> None:
    """RFC 9110 §14.2: the server may ignore Range; then it sends the whole stream (200)."""
    assert parse_range(header, size=10) is None


SIZES = st.integers(1, 10**12)


@given(size=SIZES, a=st.integers(0, 10**12 + 10), b=st.integers(0, 10**12 + 10))
def test_first_last_ranges_follow_rfc_9110(size: int, a: int, b: int) -> None:
    first, last = min(a, b), max(a, b)
    expected = rfc_range(first, last, size)
    header = f"bytes={first}-{last}"
    if expected == "416":
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size=size)
    else:
        got = parse_range(header, size=size)
        assert got == expected
        assert got is None or 0 <= got.start < got.end <= size


@given(size=SIZES, first=st.integers(0, 10**12 + 10))
def test_open_ended_ranges_follow_rfc_9110(size: int, first: int) -> None:
    expected = rfc_range(first, None, size)
    if expected == "416":
        with pytest.raises(RangeNotSatisfiable):
            parse_range(f"bytes={first}-", size=size)
    else:
        assert parse_range(f"bytes={first}-", size=size) == expected


@given(size=SIZES, n=st.integers(0, 10**12 + 10))
def test_suffix_ranges_follow_rfc_9110(size: int, n: int) -> None:
    expected = rfc_range(None, n, size)
    if expected == "416":
        with pytest.raises(RangeNotSatisfiable):
            parse_range(f"bytes=-{n}", size=size)
    else:
        assert parse_range(f"bytes=-{n}", size=size) == expected


@given(size=SIZES, a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_reversed_ranges_are_ignored(size: int, a: int, b: int) -> None:
    assume(a != b)
    assert parse_range(f"bytes={max(a, b)}-{min(a, b)}", size=size) is None


# ------------------------------------------------------------------------------- chunk_span


def rows_of(lengths: list[int]) -> list[ChunkRow]:
    offsets = [0, *accumulate(lengths)]
    return [ChunkRow(index=i, offset=offsets[i], length=n, sealed_length=n + 48,
                     leaf_hash=ZERO_HASH, compressed=False) for i, n in enumerate(lengths)]


def overlapping(rows: list[ChunkRow], rng: ByteRange) -> list[int]:
    """Brute force: every chunk with at least one byte in [start, end)."""
    return [r.index for r in rows if r.offset < rng.end and rng.start < r.offset + r.length]


@pytest.mark.parametrize(("lengths", "rng", "expected"), [
    ([10, 10, 10], (0, 30), [0, 1, 2]),
    ([10, 10, 10], (0, 10), [0]),
    ([10, 10, 10], (9, 11), [0, 1]),
    ([10, 10, 10], (10, 20), [1]),
    ([10, 10, 10], (29, 30), [2]),
    ([10, 10, 3], (25, 26), [2]),
    ([10, 1, 1, 1, 10], (10, 13), [1, 2, 3]),
    ([10, 1, 1, 1, 10], (11, 12), [2]),
    ([7], (3, 4), [0]),
], ids=["whole", "first-chunk-exactly", "straddles-boundary", "second-chunk-exactly",
        "last-byte", "short-last-chunk", "run-of-one-byte-chunks", "one-byte-chunk",
        "single-chunk"])
def test_chunk_span_examples(lengths: list[int], rng: tuple[int, int],
                             expected: list[int]) -> None:
    span = chunk_span(rows_of(lengths), ByteRange(*rng))
    assert isinstance(span, range)
    assert list(span) == expected


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[int], ByteRange]:
    full = draw(st.integers(1, 64))
    count = draw(st.integers(1, 40))
    # mostly full chunks, with short ones anywhere (a resumed upload leaves a short chunk)
    lengths = [draw(st.one_of(st.just(full), st.integers(1, full))) for _ in range(count)]
    size = sum(lengths)
    start = draw(st.integers(0, size - 1))
    end = draw(st.integers(start + 1, size))
    return lengths, ByteRange(start, end)


@given(layouts())
def test_chunk_span_is_exactly_the_overlapping_chunks(layout: tuple[list[int],
                                                                    ByteRange]) -> None:
    lengths, rng = layout
    rows = rows_of(lengths)
    span = list(chunk_span(rows, rng))
    assert span == overlapping(rows, rng)
    assert span and span == list(range(span[0], span[-1] + 1))


@given(layouts(), st.integers(0, 10**4))
def test_a_parsed_range_spans_the_chunks_holding_its_bytes(layout: tuple[list[int], ByteRange],
                                                           suffix: int) -> None:
    lengths, _ = layout
    rows = rows_of(lengths)
    size = sum(lengths)
    rng = parse_range(f"bytes=-{suffix + 1}", size=size)
    assert rng is not None
    assert list(chunk_span(rows, rng)) == overlapping(rows, rng)
    assert chunk_span(rows, rng)[-1] == len(rows) - 1


# --------------------------------------------------------------------------- sample_indexes


@pytest.mark.parametrize("count", [0, 1, 7, 1000])
@pytest.mark.parametrize("percent", [100, 100.0, 150, 1e9])
def test_100_percent_or_more_checks_every_chunk(count: int, percent: float) -> None:
    assert sample_indexes(count, percent, rng=random.Random(1)) == list(range(count))  # noqa: S311


@pytest.mark.parametrize("percent", [0, 0.001, 10, 50, 99.9])
def test_no_chunks_means_nothing_to_check(percent: float) -> None:
    assert sample_indexes(0, percent) == []


@pytest.mark.parametrize(("count", "percent", "k"), [
    (1000, 10, 100),
    (1000, 1, 10),
    (1000, 0.04, 1),   # rounds to 0, but at least one chunk is checked
    (1000, 0, 1),
    (3, 50, 2),        # round(1.5) is 2 (banker's rounding)
    (5, 50, 2),        # round(2.5) is 2
    (7, 99.9, 7),
    (1, 1, 1),
    (200, 12.5, 25),
])
def test_a_percentage_checks_about_that_many(count: int, percent: float, k: int) -> None:
    picked = sample_indexes(count, percent, rng=random.Random(7))  # noqa: S311
    assert len(picked) == k
    assert picked == sorted(set(picked))
    assert all(0 <= i < count for i in picked)


@given(count=st.integers(1, 5000), percent=st.floats(0, 99.99), seed=st.integers(0, 2**32))
def test_sampling_is_sorted_unique_in_range_and_seeded(count: int, percent: float,
                                                       seed: int) -> None:
    picked = sample_indexes(count, percent, rng=random.Random(seed))  # noqa: S311
    assert len(picked) == max(1, round(count * percent / 100))
    assert picked == sorted(set(picked))
    assert 0 <= picked[0] and picked[-1] < count
    again = sample_indexes(count, percent, rng=random.Random(seed))  # noqa: S311
    assert again == picked
    reference = random.Random(seed).sample(range(count), len(picked))  # noqa: S311
    assert picked == sorted(reference)


def test_different_seeds_pick_different_samples_and_the_default_is_random() -> None:
    samples = {tuple(sample_indexes(10_000, 1, rng=random.Random(s))) for s in range(5)}  # noqa: S311
    assert len(samples) == 5
    unseeded = {tuple(sample_indexes(10_000, 1)) for _ in range(3)}
    assert len(unseeded) == 3
    assert all(len(s) == 100 for s in unseeded)


# --------------------------------------------------------------------------- check_and_open


def sealed_row(plain: bytes, *, index: int = 3, offset: int = 0,
               sealer: ChunkSealer | None = None) -> tuple[ChunkRow, bytes]:
    sealer = sealer or ChunkSealer(KEY, session_id=SID)
    chunk = sealer.seal(plain, index=index)
    row = ChunkRow(index=index, offset=offset, length=chunk.plaintext_length,
                   sealed_length=chunk.sealed_length, leaf_hash=chunk.leaf_hash,
                   compressed=chunk.compressed)
    return row, chunk.data


PLAINTEXTS = {
    "compressible": b"flat colour region " * 300,
    "incompressible": random.Random(5).randbytes(4096),  # noqa: S311
    "one-byte": b"\x00",
    "empty": b"",
}


@pytest.mark.parametrize("plain", list(PLAINTEXTS.values()), ids=list(PLAINTEXTS))
def test_a_good_chunk_opens_to_its_plaintext(plain: bytes) -> None:
    row, data = sealed_row(plain)
    assert row.leaf_hash == leaf_hash(data)
    assert check_and_open(ChunkSealer(KEY, session_id=SID), row, data) == plain


def test_the_compression_flag_is_what_the_sealer_chose() -> None:
    assert sealed_row(PLAINTEXTS["compressible"])[0].compressed is True
    assert sealed_row(PLAINTEXTS["incompressible"])[0].compressed is False


def assert_bad(call_args: tuple[ChunkSealer, ChunkRow, bytes], reason: str) -> None:
    with pytest.raises(BadChunk) as info:
        check_and_open(*call_args)
    err = info.value
    assert isinstance(err, ChunkCorrupt)
    assert (err.status, err.code) == (502, "chunk_corrupt")
    assert (err.index, err.reason) == (call_args[1].index, reason)
    assert err.extra == {"index": call_args[1].index, "reason": reason}
    assert err.detail == f"chunk {call_args[1].index} is {reason}; no bytes of it were returned"


@pytest.mark.parametrize("where", [0, 5, 12, 31, 32, 33, -17, -1],
                         ids=["magic", "flags", "index", "nonce-end", "payload-start",
                              "payload", "payload-end", "tag-end"])
@pytest.mark.parametrize("plain", [PLAINTEXTS["compressible"], PLAINTEXTS["incompressible"]],
                         ids=["compressed", "stored"])
def test_a_flipped_byte_is_altered(plain: bytes, where: int) -> None:
    row, data = sealed_row(plain)
    bad = bytearray(data)
    bad[where] ^= 0x01
    assert_bad((ChunkSealer(KEY, session_id=SID), row, bytes(bad)), "altered")


@pytest.mark.parametrize("mutate", [
    lambda d: d[:-1],
    lambda d: d + b"\x00",
    lambda d: b"",
    lambda d: d[:32],
], ids=["truncated", "extended", "empty", "header-only"])
def test_a_chunk_of_the_wrong_length_is_altered(mutate: object) -> None:
    row, data = sealed_row(PLAINTEXTS["compressible"])
    assert callable(mutate)
    assert_bad((ChunkSealer(KEY, session_id=SID), row, mutate(data)), "altered")


def test_the_right_leaf_hash_under_the_wrong_key_is_unopenable() -> None:
    row, data = sealed_row(PLAINTEXTS["compressible"])
    assert_bad((ChunkSealer(OTHER_KEY, session_id=SID), row, data), "unopenable")


def test_the_right_leaf_hash_in_the_wrong_session_is_unopenable() -> None:
    row, data = sealed_row(PLAINTEXTS["incompressible"])
    assert_bad((ChunkSealer(KEY, session_id=OTHER_SID), row, data), "unopenable")


def test_a_chunk_moved_to_another_index_is_unopenable() -> None:
    row, data = sealed_row(PLAINTEXTS["compressible"], index=3)
    moved = ChunkRow(index=4, offset=row.offset, length=row.length,
                     sealed_length=row.sealed_length, leaf_hash=row.leaf_hash,
                     compressed=row.compressed)
    assert_bad((ChunkSealer(KEY, session_id=SID), moved, data), "unopenable")


def test_a_tampered_chunk_whose_leaf_hash_was_also_replaced_is_unopenable() -> None:
    row, data = sealed_row(PLAINTEXTS["incompressible"])
    bad = bytearray(data)
    bad[200] ^= 0x80
    forged = ChunkRow(index=row.index, offset=row.offset, length=row.length,
                      sealed_length=row.sealed_length, leaf_hash=leaf_hash(bytes(bad)),
                      compressed=row.compressed)
    assert_bad((ChunkSealer(KEY, session_id=SID), forged, bytes(bad)), "unopenable")


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_row_claiming_another_length_is_unopenable(delta: int) -> None:
    row, data = sealed_row(PLAINTEXTS["compressible"])
    wrong = ChunkRow(index=row.index, offset=row.offset, length=row.length + delta,
                     sealed_length=row.sealed_length, leaf_hash=row.leaf_hash,
                     compressed=row.compressed)
    assert_bad((ChunkSealer(KEY, session_id=SID), wrong, data), "unopenable")


def test_chunk_rows_round_trip_through_json() -> None:
    row, _ = sealed_row(PLAINTEXTS["compressible"], index=9, offset=123)
    wire = ChunkModel.of(row).model_dump_json().encode()
    assert reads(ChunkModel)(200, wire).to_entry() == row
    assert json.loads(wire)["leaf_hash"] == row.leaf_hash.hex()


def test_parse_range_takes_huge_numbers_cleanly() -> None:
    """5000 digits (past int()'s default limit): a start past the end, an end clamped."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=" + "1" * 5000 + "-", size=10)
    assert parse_range("bytes=0-" + "1" * 5000, size=10) == ByteRange(0, 10)
    assert parse_range("bytes=-" + "0" * 5000 + "3", size=10) == ByteRange(7, 10)


# --------------------------------------------------------------------------- examined


class _Streamed(httpx.AsyncByteStream):
    """A body httpx hands over as it would from a socket (not pre-read like `content=`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


def _examine_over(stored: dict[int, bytes], rows: list[ChunkRow]) -> list[ChunkFacts]:
    """Run verify's check over a stand-in for storage's chunk reads (unit level only:
    the e2e tamper tests run it against real processes)."""
    def serve(request: httpx.Request) -> httpx.Response:
        index = int(request.url.path.rsplit("/", 1)[1])
        if index not in stored:
            return httpx.Response(404, json={"error": "chunk_not_found", "detail": "no file"})
        return httpx.Response(200, stream=_Streamed(stored[index]))

    async def run() -> list[ChunkFacts]:
        storage = StorageClient("http://storage.test", "token",
                                transport=httpx.MockTransport(serve))
        budget = MemoryBudget(64 << 20)
        with ThreadPoolExecutor(1) as executor:
            reader = ChunkReader(storage, SID, rows, sealer=ChunkSealer(KEY, session_id=SID),
                                 buffers=ChunkBuffers(1 << 20, keep=4, budget=budget),
                                 resources=ReadResources(executor, 1, 2, budget))
            try:
                return list((await reader.examine(range(len(rows)))).values())
            finally:
                await storage.aclose()
    return asyncio.run(run())


def test_examined_chunks_report_what_their_bytes_are_whatever_the_rows_say() -> None:
    plains = [PLAINTEXTS["compressible"], PLAINTEXTS["incompressible"], b"x" * 100,
              b"y" * 100, b"z" * 100]
    stranger = ChunkSealer(OTHER_KEY, session_id=SID)
    rows: list[ChunkRow] = []
    stored: dict[int, bytes] = {}
    for i, offset in enumerate(accumulate([0, *map(len, plains[:-1])])):
        row, data = sealed_row(plains[i], index=i, offset=offset,
                               sealer=stranger if i == 3 else None)
        rows.append(row)
        stored[i] = data
    stored[1] = stored[1][:-1] + bytes([stored[1][-1] ^ 1])  # altered
    del stored[2]  # missing
    rows[4] = dataclasses.replace(rows[4], leaf_hash=bytes(32), length=7)  # a forged row
    facts = _examine_over(stored, rows)
    assert [f.index for f in facts] == [0, 1, 2, 3, 4]
    assert facts[0].leaf == rows[0].leaf_hash and facts[0].opens
    assert facts[1].leaf not in (None, rows[1].leaf_hash)  # altered bytes
    assert facts[2].leaf is None  # missing
    # Chunk 3's bytes are the ones committed (only the key is wrong): its leaf holds.
    assert facts[3].leaf == rows[3].leaf_hash and not facts[3].opens
    # Chunk 4's bytes are intact: their own leaf hash and header, not the forged row's.
    assert facts[4].leaf == leaf_hash(stored[4]) != rows[4].leaf_hash
    assert (facts[4].length, facts[4].sealed_length, facts[4].opens) == (100, len(stored[4]),
                                                                          True)
