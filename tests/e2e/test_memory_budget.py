"""The memory budget, end to end: each service's peak RSS stays within its budget on every path.

Real processes on loopback with the default 8 MiB chunks and the default processor
memory budget (`LUCID_MEMORY_BUDGET_MB`), one fresh cluster, so each process's peak
(VmHWM in /proc/PID/status) belongs to this workload alone.  In order:

- a 48 MiB session in one streamed PATCH (no checksum), then `lucid-sessions upload` of
  another 48 MiB file (the CLI: `Upload-Checksum` on every request, 16 MiB requests),
  one after the other;
- `lucid-sessions replay` of it into a file, Range seeks across chunk boundaries, verify;
- 8 sessions of 16 MiB uploaded at once (every other one checksummed), then replayed
  and verified at once;
- 32 sessions of 8 MiB at once, the same way.

Budgets (issue #16): processor <= 150 MB, storage and gateway <= 100 MB (MB = 10^6 bytes).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sessions.client.launcher import SERVICES
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    ID_RE,
    MIB,
    UPLOAD_TYPE,
    checksum_header,
    create_session,
    finalize,
    session_bytes,
)

pytestmark = pytest.mark.heavy

CHUNK = 8 * MIB  # the default chunk size
SINGLE = 48 * MIB
BUDGET_MB = {"processor": 150, "storage": 100, "api": 100}
TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("memory"))
    c.extra_env["*"] = {"LUCID_CHUNK_SIZE": str(CHUNK), "LUCID_MAX_UPLOAD_BYTES": str(1 << 30)}
    with c.serving():
        yield c



def data_of(size: int, seed: int) -> bytes:
    """Return `size` bytes distinct per seed: recording-like (a rotation of one base) for even
    seeds, incompressible for odd ones (they fill every buffer to the brim)."""
    if seed % 2:
        return random.Random(seed).randbytes(size)  # noqa: S311 - test data
    base = session_bytes(SINGLE + 4096, seed=1600)
    at = (seed * 7_919_993) % SINGLE
    rotated = base[at:] + base[:at]
    return rotated[:size]


def cli(cluster: Cluster, workdir: Path, *args: str) -> str:
    """Run `python -m sessions.client ARGS` as a user would; return its output (exit 0 required)."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": cluster.url("api"), "XDG_CACHE_HOME": str(workdir / "cache"),
            "LUCID_TOKEN_FILE": str(cluster.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.client", *args], cwd=workdir, env=env, text=True,
        capture_output=True, timeout=TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, (args, output)
    return output


def one_session(cluster: Cluster, size: int, seed: int, *,
                checksum: bool) -> tuple[str, str, int]:
    """Upload one session in one streamed PATCH and finalize it; return (id, sha256, size)."""
    data = data_of(size, seed)
    with cluster.client() as api:
        api.timeout = TIMEOUT
        sid = create_session(api, {"suite": "memory"})["id"]
        headers = {"Upload-Offset": "0", "Content-Type": UPLOAD_TYPE}
        if checksum:
            headers["Upload-Checksum"] = checksum_header(data)
        r = api.patch(f"/sessions/{sid}/upload", content=data, headers=headers)
        assert r.status_code == 200, (r.status_code, r.text)
        finalize(api, sid)
    return sid, hashlib.sha256(data).hexdigest(), size


def read_back(cluster: Cluster, sid: str, digest: str, size: int) -> None:
    """Replay a session (streamed, hashed as it arrives), seek into it, and verify it."""
    with cluster.client() as api:
        api.timeout = TIMEOUT
        h = hashlib.sha256()
        with api.stream("GET", f"/sessions/{sid}/replay") as r:
            assert r.status_code == 200
            for piece in r.iter_raw():
                h.update(piece)
        assert h.hexdigest() == digest
        seek = CHUNK if size > CHUNK + 4 else size // 2  # across a chunk boundary if any
        r = api.get(f"/sessions/{sid}/replay", headers={"Range": f"bytes={seek - 5}-{seek + 4}"})
        assert r.status_code == 206 and len(r.content) == 10, (dict(r.headers), r.content)
        report = api.post(f"/sessions/{sid}/verify").json()
        assert report["ok"] is True, report


def at_once(cluster: Cluster, count: int, size: int, seed: int) -> None:
    """Upload `count` sessions at once, then replay, seek and verify them all at once."""
    with ThreadPoolExecutor(count) as pool:
        made = list(pool.map(lambda i: one_session(cluster, size + i, seed + i,
                                                   checksum=i % 2 == 0), range(count)))
        list(pool.map(lambda m: read_back(cluster, *m), made))


def test_every_path_stays_within_the_memory_budget(cluster: Cluster, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    peaks: dict[str, dict[str, float]] = {}

    def record(phase: str) -> None:
        peaks[phase] = {name: cluster.peak_rss_kib(name) * 1024 / 1e6  # MB (10^6 bytes)
                         for name in SERVICES}

    streamed = one_session(cluster, SINGLE, 1, checksum=False)
    record("48 MiB streamed PATCH")
    recording = tmp_path / "recording.bin"
    recording.write_bytes(data_of(SINGLE, 3))
    out = cli(cluster, tmp_path, "upload", str(recording), "--request-mib", "16")
    sid = ID_RE.search(out)
    assert sid is not None, out
    record("48 MiB CLI upload (checksummed)")
    replayed = tmp_path / "replayed.bin"
    cli(cluster, tmp_path, "replay", sid.group(0), "-o", str(replayed))
    assert replayed.read_bytes() == recording.read_bytes()
    read_back(cluster, *streamed)
    record("replay, Range, verify")
    at_once(cluster, 8, 16 * MIB, 100)
    record("8 at once (16 MiB)")
    at_once(cluster, 32, 8 * MIB, 200)
    record("32 at once (8 MiB)")
    with capsys.disabled():
        print(f"\nmemory budget workload in {time.monotonic() - started:.0f}s; peak RSS "
              "(VmHWM, MB) after each phase:")
        for phase, by_name in peaks.items():
            print(f"  {phase:34s} " + ", ".join(f"{n} {v:.1f}" for n, v in by_name.items()))
    final = peaks["32 at once (8 MiB)"]
    over = {name: round(final[name], 1) for name in SERVICES if final[name] > BUDGET_MB[name]}
    assert not over, f"peak RSS over budget (MB): {over}; budgets {BUDGET_MB}; phases {peaks}"
