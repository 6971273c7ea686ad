"""Replay with HTTP byte ranges that cross chunk boundaries (1 MiB chunks)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.support import CHUNK, MIB, assert_error, recorded_session, replay, session_bytes

pytestmark = pytest.mark.e2e

SIZE = 4 * MIB + MIB // 2  # chunks 0..3 full, chunk 4 half
B1, B2, B3 = CHUNK, 2 * CHUNK, 3 * CHUNK  # the first three chunk boundaries


@pytest.fixture(scope="module")
def recorded(api: httpx.Client) -> tuple[str, bytes]:
    data = session_bytes(SIZE, seed=30)
    return recorded_session(api, data, piece=SIZE)["id"], data


@pytest.fixture(scope="module")
def recording(api: httpx.Client) -> tuple[str, bytes]:
    """A session still recording: its committed bytes replay too."""
    data = session_bytes(2 * MIB + 17, seed=31)
    return recorded_session(api, data, piece=MIB + 3, final=False)["id"], data


RANGES = {
    "inside-one-chunk": (10, 20),
    "first-byte": (0, 0),
    "across-one-boundary": (B1 - 5, B1 + 4),
    "across-two-boundaries": (B1 - 5, B2 + 4),
    "across-three-boundaries": (B1 - 5, B3 + 4),
    "exactly-one-chunk": (B2, B3 - 1),
    "last-byte-before-boundary": (B1 - 1, B1 - 1),
    "first-byte-after-boundary": (B1, B1),
    "two-bytes-straddling": (B3 - 1, B3),
    "last-byte": (SIZE - 1, SIZE - 1),
}


@pytest.mark.parametrize("first,last", list(RANGES.values()), ids=list(RANGES))
def test_closed_range(api: httpx.Client, recorded: tuple[str, bytes], first: int,
                      last: int) -> None:
    sid, data = recorded
    r = replay(api, sid, f"bytes={first}-{last}")
    assert r.status_code == 206, r.text[:300]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.content == data[first:last + 1]


@pytest.mark.parametrize("first", [0, B1 - 3, B2, SIZE - 1])
def test_open_ended_range(api: httpx.Client, recorded: tuple[str, bytes], first: int) -> None:
    sid, data = recorded
    r = replay(api, sid, f"bytes={first}-")
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{SIZE - 1}/{SIZE}"
    assert r.content == data[first:]


@pytest.mark.parametrize("n", [1, MIB // 2, MIB // 2 + 1, 2 * MIB + 3, SIZE, SIZE + 1000])
def test_suffix_range(api: httpx.Client, recorded: tuple[str, bytes], n: int) -> None:
    sid, data = recorded
    r = replay(api, sid, f"bytes=-{n}")
    assert r.status_code == 206
    start = max(0, SIZE - n)
    assert r.headers["content-range"] == f"bytes {start}-{SIZE - 1}/{SIZE}"
    assert r.content == data[start:]


def test_range_end_past_size_is_clipped(api: httpx.Client, recorded: tuple[str, bytes]) -> None:
    sid, data = recorded
    r = replay(api, sid, f"bytes={B3 + 1}-{SIZE + 10_000}")
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {B3 + 1}-{SIZE - 1}/{SIZE}"
    assert r.content == data[B3 + 1:]


def test_whole_replay(api: httpx.Client, recorded: tuple[str, bytes]) -> None:
    sid, data = recorded
    r = replay(api, sid)
    assert r.status_code == 200
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == str(SIZE)
    assert "content-range" not in r.headers
    assert r.content == data


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 5}",
                                    f"bytes={SIZE + 100}-{SIZE + 200}", "bytes=-0"])
def test_unsatisfiable_range(api: httpx.Client, recorded: tuple[str, bytes],
                             header: str) -> None:
    sid, _ = recorded
    assert_error(replay(api, sid, header), 416, "range_not_satisfiable")


def test_unsatisfiable_range_names_the_size(api: httpx.Client,
                                            recorded: tuple[str, bytes]) -> None:
    """RFC 9110 §15.5.17: a 416 says the current length in `Content-Range: bytes */size`."""
    sid, _ = recorded
    r = replay(api, sid, f"bytes={SIZE}-")
    assert r.status_code == 416
    assert r.headers.get("content-range") == f"bytes */{SIZE}"


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=-", "bytes=1-2-3", "bytes=x-5",
                                    "chunks=0-1", "bytes=5-2", "bytes=10-5", "bytes=0-1,5-9",
                                    f"bytes=0-0,{SIZE}-"])
def test_invalid_or_multiple_ranges_are_ignored(api: httpx.Client, recorded: tuple[str, bytes],
                                                header: str) -> None:
    """RFC 9110 §14.2: an invalid Range (was 400) or several ranges (was 416) are ignored:
    200 with the whole stream, no Content-Range."""
    sid, data = recorded
    r = replay(api, sid, header)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    assert "content-range" not in r.headers
    assert r.content == data


def test_ranges_of_a_recording_session(api: httpx.Client,
                                       recording: tuple[str, bytes]) -> None:
    sid, data = recording
    size = len(data)
    spans = [(0, size - 1), (MIB - 2, MIB + 5), (MIB + 2, MIB + 3), (size - 1, size - 1)]
    for first, last in spans:
        r = replay(api, sid, f"bytes={first}-{last}")
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert r.content == data[first:last + 1]
