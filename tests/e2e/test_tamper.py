"""Stored chunks altered or removed on disk: replay refuses, verify names the chunk."""

from __future__ import annotations

import httpx
import pytest

from sessions.core import leaf_hash, verify_inclusion
from tests.e2e.conftest import Cluster
from tests.e2e.support import MIB, assert_error, recorded_session, replay, session_bytes

pytestmark = pytest.mark.e2e

SIZE = 6 * MIB + 100  # chunks 0..5 full, chunk 6 short
ALTERED, MISSING = 2, 4


def _verify(api: httpx.Client, sid: str, sample: float | None = None) -> dict[str, object]:
    r = api.post(f"/sessions/{sid}/verify", params={} if sample is None else {"sample": sample})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    assert body["session_id"] == sid and body["chunk_count"] == 7
    return body


def _flip_one_byte(cluster: Cluster, sid: str, index: int) -> None:
    path = cluster.chunk_file(sid, index)
    assert path.is_file(), sorted(p.name for p in cluster.session_dir(sid).iterdir())
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))


def _stream_replay(api: httpx.Client, sid: str) -> tuple[int, bytes, int | None, str | None]:
    """Return (status, bytes received, Content-Length, transport error) of a whole replay."""
    got = bytearray()
    error = None
    with api.stream("GET", f"/sessions/{sid}/replay") as r:
        declared = r.headers.get("content-length")
        try:
            for piece in r.iter_raw():
                got += piece
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        return r.status_code, bytes(got), int(declared) if declared else None, error


def test_tampered_and_missing_chunks(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(SIZE, seed=50)
    sid = recorded_session(api, data, piece=SIZE)["id"]

    clean = _verify(api, sid)
    assert clean["ok"] is True and clean["bad_chunks"] == []
    assert (clean["checked"], clean["sampled"]) == (7, False)
    assert clean["root_ok"] is True and clean["signature_ok"] is True

    sampled = _verify(api, sid, sample=50)
    assert sampled["sampled"] is True and sampled["ok"] is True
    assert 3 <= sampled["checked"] <= 4, sampled  # type: ignore[operator]

    # 1. One flipped byte in chunk 2's file.
    _flip_one_byte(cluster, sid, ALTERED)
    with cluster.broken_stream("api", "processor"):
        status, got, declared, error = _stream_replay(api, sid)
    if status == 502:
        assert got and b"chunk_corrupt" in got, got[:300]
    else:
        assert status == 200, (status, got[:300])
        assert declared == SIZE
        # The stream is cut before chunk 2: the client never holds a complete, wrong body.
        assert len(got) < SIZE, (len(got), error)
        assert len(got) <= ALTERED * MIB, len(got)
        assert got == data[:len(got)]

    # A range that starts in the bad chunk fails before any byte is sent.
    body = assert_error(replay(api, sid, f"bytes={ALTERED * MIB + 10}-"), 502, "chunk_corrupt")
    assert body.get("index", ALTERED) == ALTERED
    # Ranges that avoid it still replay.
    r = replay(api, sid, f"bytes={MIB - 3}-{MIB + 3}")
    assert r.status_code == 206 and r.content == data[MIB - 3:MIB + 4]
    r = replay(api, sid, f"bytes={ALTERED * MIB + MIB}-{ALTERED * MIB + MIB + 9}")
    assert r.status_code == 206 and r.content == data[3 * MIB:3 * MIB + 10]

    report = _verify(api, sid)
    assert report["ok"] is False
    assert report["bad_chunks"] == [{"index": ALTERED, "reason": "altered"}]
    assert report["root_ok"] is False and report["signature_ok"] is True

    # An auditor without keys sees the same: the proof holds, the stored bytes do not match it.
    proof = api.get(f"/sessions/{sid}/proof/inclusion", params={"index": ALTERED}).json()
    sealed = api.get(f"/sessions/{sid}/chunks/{ALTERED}").content
    assert leaf_hash(sealed).hex() != proof["leaf_hash"]
    verify_inclusion(bytes.fromhex(proof["leaf_hash"]), index=ALTERED, size=proof["size"],
                     proof=[bytes.fromhex(h) for h in proof["proof"]],
                     root=bytes.fromhex(proof["root_hash"]))

    # 2. Chunk 4's file deleted.
    cluster.chunk_file(sid, MISSING).unlink()
    report = _verify(api, sid)
    assert report["ok"] is False
    assert report["bad_chunks"] == [{"index": ALTERED, "reason": "altered"},
                                    {"index": MISSING, "reason": "missing"}]
    assert report["checked"] == 7
    assert_error(replay(api, sid, f"bytes={MISSING * MIB}-{MISSING * MIB}"), 502, "chunk_corrupt")
    r = replay(api, sid, f"bytes={SIZE - 200}-")
    assert r.status_code == 206 and r.content == data[SIZE - 200:]


def test_tampered_first_chunk_fails_before_any_byte(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(2 * MIB + 1, seed=51)
    sid = recorded_session(api, data, piece=len(data))["id"]
    _flip_one_byte(cluster, sid, 0)
    body = assert_error(replay(api, sid), 502, "chunk_corrupt")
    assert body.get("reason", "altered") == "altered"
    report = api.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] is False and report["bad_chunks"] == [{"index": 0, "reason": "altered"}]


@pytest.mark.parametrize("sample", [0, -5, 100.5, "abc"])
def test_bad_sample(api: httpx.Client, sample: object) -> None:
    sid = recorded_session(api, session_bytes(10, seed=52), piece=10)["id"]
    assert_error(api.post(f"/sessions/{sid}/verify", params={"sample": sample}), 422,
                 "invalid_parameter")


def test_a_chunk_grown_past_any_sealed_size_is_altered_not_an_outage(cluster: Cluster,
                                                                      api: httpx.Client) -> None:
    """Replay reads chunks into buffers sized for the largest sealed chunk: more is tampering."""
    data = session_bytes(2 * MIB + 1, seed=52)
    sid = recorded_session(api, data, piece=len(data))["id"]
    path = cluster.chunk_file(sid, 1)
    path.write_bytes(path.read_bytes() + bytes(2 * MIB))  # longer than any 1 MiB chunk seals to
    body = assert_error(replay(api, sid, f"bytes={MIB}-"), 502, "chunk_corrupt")
    assert body.get("index", 1) == 1 and body.get("reason", "altered") == "altered"
    r = replay(api, sid, f"bytes=0-{MIB - 1}")
    assert r.status_code == 206 and r.content == data[:MIB]
    report = api.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] is False and report["bad_chunks"] == [{"index": 1, "reason": "altered"}]
