"""`upload --session` checks that the node holds this file's prefix (issue 12, defect 5).

The size alone proved nothing: a different file of the same size "uploaded" into a
completed session with exit 0, and a recording session was resumed without checking
that its committed bytes were the file's.  The CLI now asks the node
(`POST /v1/sessions/{id}/upload/prefix-check`), which reads its committed chunks back
and compares the SHA-256 of their plaintext with the file's.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    assert_error,
    create_session,
    head_offset,
    patch,
    recorded_session,
    replay,
    session_bytes,
)
from tests.e2e.test_cli import cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-prefix")


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def check(api: httpx.Client, sid: str, offset: int, digest: str) -> httpx.Response:
    return api.post(f"/sessions/{sid}/upload/prefix-check",
                    json={"offset": offset, "sha256": digest})


def write(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / name
    path.write_bytes(data)
    return path


# -- the endpoint --------------------------------------------------------------------------------

def test_prefix_check_compares_the_committed_plaintext(api: httpx.Client) -> None:
    data = session_bytes(2 * CHUNK + 999, seed=1250)
    sid = create_session(api, {"case": "prefix-endpoint"})["id"]
    r = check(api, sid, 0, b64sha(b""))
    assert r.status_code == 200 and r.json() == {"match": True, "offset": 0}, r.text
    assert patch(api, sid, 0, data).status_code == 200

    assert check(api, sid, len(data), b64sha(data)).json() == {"match": True,
                                                                 "offset": len(data)}
    other = bytearray(data)
    other[CHUNK + 5] ^= 1  # one bit, in the second chunk
    assert check(api, sid, len(data), b64sha(bytes(other))).json() == {"match": False,
                                                                         "offset": len(data)}
    body = assert_error(check(api, sid, len(data) - 1, b64sha(data[:-1])), 409,
                        "offset_mismatch")
    assert body["offset"] == len(data)
    assert_error(check(api, sid, 1 << 70, b64sha(data)), 409, "offset_mismatch")
    # JSON Schema counts 12.0 an integer, as every JSON integer of the project does
    url = f"/sessions/{sid}/upload/prefix-check"
    r = api.post(url, json={"offset": float(len(data)), "sha256": b64sha(data)})
    assert r.status_code == 200 and r.json()["match"] is True, r.text
    assert_error(api.post(url, json={"offset": 1e19, "sha256": b64sha(data)}), 409,
                 "offset_mismatch")
    done = api.post(f"/sessions/{sid}/finalize")
    assert done.status_code == 200
    assert check(api, sid, len(data), b64sha(data)).json()["match"] is True


@pytest.mark.parametrize("body", [
    {"offset": 0},
    {"offset": -1, "sha256": b64sha(b"")},
    {"offset": 0, "sha256": hashlib.sha256(b"").hexdigest()},
    {"offset": 0, "sha256": b64sha(b"")[:-1]},
    {"offset": 0, "sha256": b64sha(b""), "extra": 1},
    {"offset": "0", "sha256": b64sha(b"")},
    {"offset": False, "sha256": b64sha(b"")},
    {"offset": 0.5, "sha256": b64sha(b"")},
], ids=["no-digest", "negative", "hex", "unpadded", "unknown-field", "string-offset",
        "bool-offset", "fraction-offset"])
def test_prefix_check_refuses_malformed_bodies(api: httpx.Client, body: dict[str, object]
                                               ) -> None:
    sid = create_session(api, {"case": "prefix-malformed"})["id"]
    r = api.post(f"/sessions/{sid}/upload/prefix-check", json=body)
    assert_error(r, 422, "invalid_parameter")


def test_prefix_check_of_unknown_and_deleted_sessions(api: httpx.Client) -> None:
    assert_error(check(api, "0" * 26, 0, b64sha(b"")), 404, "session_not_found")
    assert_error(check(api, "nope", 0, b64sha(b"")), 400, "invalid_id")
    sid = recorded_session(api, b"deleted soon")["id"]
    assert api.delete(f"/sessions/{sid}").status_code == 204
    assert_error(check(api, sid, 12, b64sha(b"deleted soon")), 409, "invalid_state")


def test_prefix_check_reports_a_damaged_chunk(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(2 * CHUNK, seed=1253)
    sid = create_session(api, {"case": "prefix-damaged"})["id"]
    assert patch(api, sid, 0, data).status_code == 200
    chunk = cluster.chunk_file(sid, 1)
    blob = bytearray(chunk.read_bytes())
    blob[-1] ^= 1
    chunk.write_bytes(bytes(blob))
    body = assert_error(check(api, sid, len(data), b64sha(data)), 502, "chunk_corrupt")
    assert (body["index"], body["reason"]) == (1, "altered")


# -- the CLI ------------------------------------------------------------------------------------

def test_a_different_file_of_the_same_size_is_refused(cluster: Cluster, workdir: Path) -> None:
    """The issue's case: before, this exited 0 and nothing happened."""
    data = session_bytes(CHUNK + 4321, seed=1251)
    original = write(workdir, "original.rec", data)
    out = cli(cluster, workdir, "upload", str(original)).stdout
    sid = out.strip().splitlines()[-1]

    impostor = write(workdir, "impostor.rec", data[:-1] + bytes([data[-1] ^ 0xFF]))
    proc = cli(cluster, workdir, "upload", str(impostor), "--session", sid, ok=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: prefix_mismatch:" in proc.stderr and "impostor.rec" in proc.stderr

    same = cli(cluster, workdir, "upload", str(original), "--session", sid)
    assert same.stdout.strip() == sid and "already holds" in same.stderr


def test_resuming_checks_the_committed_prefix(cluster: Cluster, api: httpx.Client,
                                              workdir: Path) -> None:
    data = session_bytes(3 * CHUNK + 777, seed=1252)
    sid = create_session(api, {"case": "prefix-resume"})["id"]
    assert patch(api, sid, 0, data[:CHUNK]).status_code == 200  # an interrupted upload

    other = bytearray(data)
    other[100] ^= 1  # differs inside the committed prefix only
    stranger = write(workdir, "stranger.rec", bytes(other))
    proc = cli(cluster, workdir, "upload", str(stranger), "--session", sid, ok=False)
    assert proc.returncode == 1 and "error: prefix_mismatch:" in proc.stderr, proc.stderr
    assert head_offset(api, sid) == CHUNK, "nothing was appended"

    shorter = write(workdir, "shorter.rec", data[:CHUNK - 1])
    proc = cli(cluster, workdir, "upload", str(shorter), "--session", sid, ok=False)
    assert proc.returncode == 1 and "error: prefix_mismatch:" in proc.stderr, proc.stderr

    right = write(workdir, "right.rec", data)
    done = cli(cluster, workdir, "upload", str(right), "--session", sid)
    assert done.stdout.strip() == sid
    assert replay(api, sid).content == data
