"""The memory budget, end to end: each service's peak RSS stays within its budget on every path.

Real processes on loopback with the default 8 MiB chunks and the default processor
memory budget (`LUCID_MEMORY_BUDGET_MB`), one fresh cluster, so each process's peak
(VmHWM in /proc/PID/status) belongs to this workload alone.  In order:

- two 48 MiB sessions, each in one streamed PATCH (no checksum; one incompressible, one
  recording-like), then `lucid-sessions upload` of another 48 MiB file (the CLI:
  `Upload-Checksum` on every request, 16 MiB requests), one after the other;
- `lucid-sessions replay` of it into a file, then of the two others a replay, Range seeks
  across chunk boundaries and a verify (a recording-like replay opens its chunks faster
  than they are sent: the most plaintext held at once);
- 8 sessions of 16 MiB uploaded at once (every other one checksummed), then replayed
  and verified at once;
- 32 sessions of 8 MiB at once, the same way.

Budgets (issue #16): processor <= 150 MB, storage and gateway <= 100 MB (MB = 10^6 bytes).

With storage's chunks on S3 (SeaweedFS on loopback) a second cluster runs the phases that
load storage most (a 48 MiB streamed PATCH, 32 sessions at once), then 16 chunks
PUT to storage at once directly, as several processors would: each chunk is gathered in
memory before its PUT, and those bodies share `LUCID_S3_PUT_BUFFER_MB` (README, "Memory
on S3": the figures with and without that bound).  Storage's budget on S3 is
`S3_STORAGE_BUDGET_MB`, above the local one by what the object store's client (obstore's
runtime) holds at rest; the processor's and gateway's are unchanged.
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
from sessions.core import LEAF_PREFIX
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
from tests.storage.s3_server import S3Server, s3_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.heavy

CHUNK = 8 * MIB  # the default chunk size
SINGLE = 48 * MIB
BUDGET_MB = {"processor": 150, "storage": 100, "api": 100}
S3_STORAGE_BUDGET_MB = 130
TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("memory"))
    c.extra_env["*"] = {"LUCID_CHUNK_SIZE": str(CHUNK), "LUCID_MAX_UPLOAD_BYTES": str(1 << 30)}
    with c.serving():
        yield c


@pytest.fixture(scope="module")
def s3_cluster(tmp_path_factory: pytest.TempPathFactory,
               s3_server: S3Server) -> Iterator[Cluster]:  # noqa: F811 - the fixture
    """A fresh cluster whose storage keeps its chunks on the run's SeaweedFS."""
    root = tmp_path_factory.mktemp("memory-s3")
    key, secret = s3_server.write_credentials(root / "s3-secrets")
    (root / "cluster").mkdir()
    c = Cluster(root / "cluster")
    c.extra_env["*"] = {"LUCID_CHUNK_SIZE": str(CHUNK), "LUCID_MAX_UPLOAD_BYTES": str(1 << 30)}
    c.extra_env["storage"] = {
        "LUCID_CHUNK_STORE_URL": s3_server.url(), "LUCID_S3_ENDPOINT": s3_server.endpoint,
        "LUCID_S3_ACCESS_KEY_FILE": str(key), "LUCID_S3_SECRET_KEY_FILE": str(secret)}
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


class Peaks:
    """Each service's peak RSS (VmHWM, MB = 10^6 bytes) after each phase of a workload."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.started = time.monotonic()
        self.by_phase: dict[str, dict[str, float]] = {}

    def record(self, phase: str) -> None:
        self.by_phase[phase] = {name: self.cluster.peak_rss_kib(name) * 1024 / 1e6
                                for name in SERVICES}

    def check(self, title: str, capsys: pytest.CaptureFixture[str],
              budgets: dict[str, int] = BUDGET_MB) -> None:
        """Print the phases' peaks; assert the last phase's are within the budgets."""
        with capsys.disabled():
            print(f"\n{title} in {time.monotonic() - self.started:.0f}s; peak RSS "
                  "(VmHWM, MB) after each phase:")
            for phase, by_name in self.by_phase.items():
                print(f"  {phase:34s} " + ", ".join(f"{n} {v:.1f}" for n, v in by_name.items()))
        final = list(self.by_phase.values())[-1]
        over = {name: round(final[name], 1) for name in SERVICES if final[name] > budgets[name]}
        assert not over, (f"peak RSS over budget (MB): {over}; budgets {budgets}; "
                          f"phases {self.by_phase}")


def test_every_path_stays_within_the_memory_budget(cluster: Cluster, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    peaks = Peaks(cluster)
    record = peaks.record

    streamed = one_session(cluster, SINGLE, 1, checksum=False)
    recorded = one_session(cluster, SINGLE, 2, checksum=False)
    record("48 MiB streamed PATCH (x2)")
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
    read_back(cluster, *recorded)
    record("replay, Range, verify")
    at_once(cluster, 8, 16 * MIB, 100)
    record("8 at once (16 MiB)")
    at_once(cluster, 32, 8 * MIB, 200)
    record("32 at once (8 MiB)")
    peaks.check("memory budget workload", capsys)


def test_storage_on_s3_stays_within_the_memory_budget(
        s3_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    peaks = Peaks(s3_cluster)
    read_back(s3_cluster, *one_session(s3_cluster, SINGLE, 1, checksum=False))
    peaks.record("48 MiB streamed PATCH, read back")
    at_once(s3_cluster, 32, 8 * MIB, 200)
    peaks.record("32 at once (8 MiB)")
    direct_puts(s3_cluster, 16)
    peaks.record("16 chunk PUTs at once to storage")
    peaks.check("memory budget workload, chunks on S3", capsys,
                {**BUDGET_MB, "storage": S3_STORAGE_BUDGET_MB})


def direct_puts(cluster: Cluster, count: int) -> None:
    """PUT one incompressible 8 MiB chunk to each of `count` new sessions at once, straight to
    storage's internal API (as `count` processors would), and check each was staged."""
    with cluster.client() as api:
        sids = [create_session(api, {"suite": "memory-direct"})["id"] for _ in range(count)]

    def put(i: int) -> None:
        data = random.Random(300 + i).randbytes(CHUNK)  # noqa: S311 - test data
        leaf = hashlib.sha256(LEAF_PREFIX + data).hexdigest()
        with cluster.storage_internal() as storage:
            r = storage.put(f"/sessions/{sids[i]}/chunks/0", content=data, timeout=TIMEOUT,
                            headers={"Content-Type": "application/octet-stream",
                                     "X-Lucid-Leaf-Hash": leaf})
            assert r.status_code == 201, (r.status_code, r.text)
            assert r.json() == {"index": 0, "sealed_length": CHUNK}

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(put, range(count)))
