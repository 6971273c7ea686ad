"""32 sessions at once through the real gateway: uploads (mixed sizes, some checksummed, some
interrupted and resumed), replays and verifies, all concurrent; each service's peak memory
is recorded and printed (the memory budget is asserted elsewhere).

A fresh cluster of its own, so the peak (VmHWM) belongs to this workload alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from sessions.client.launcher import SERVICES
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    checksum_header,
    create_session,
    finalize,
    patch,
    replay,
    resume,
    session_bytes,
)

pytestmark = pytest.mark.heavy

WORKERS = 32
SIZES = (1, 4096, 300_000, CHUNK, CHUNK + 1, 2 * CHUNK + 12_345, 3 * CHUNK - 7, 5 * CHUNK + 3)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("concurrency"))
    with c.serving():
        yield c



def one_session(cluster: Cluster, i: int) -> str:
    """Upload, finalize, replay and verify one session the way worker i does; return its id."""
    rng = random.Random(i)  # noqa: S311 - reproducible test data
    data = session_bytes(SIZES[i % len(SIZES)] + rng.randrange(1000), seed=1000 + i)
    with cluster.client() as api:
        sid = create_session(api, {"suite": "concurrency", "worker": str(i)})["id"]
        if i % 4 == 1 and len(data) > 1:  # interrupted mid-body, then resumed
            req = cluster.open_upload(sid, length=len(data), timeout=60)
            req.send(data[:rng.randrange(1, len(data))])
            req.abort()
            resume(api, sid, data, timeout=60)
        else:
            offset = 0
            while offset < len(data):  # whole chunks per request, except at the end
                body = data[offset:offset + CHUNK * rng.choice((1, 2))]
                r = patch(api, sid, offset, body,
                          checksum=checksum_header(body) if i % 3 == 0 else None)
                assert r.status_code == 200, (r.status_code, r.text)
                offset += len(body)
        finalize(api, sid)
        assert replay(api, sid).content == data
        assert replay(api, sid, "bytes=1-").content == data[1:]
        report = api.post(f"/sessions/{sid}/verify").json()
        assert report["ok"] is True, report
    return sid


def test_32_concurrent_sessions(fresh: Cluster, capsys: pytest.CaptureFixture[str],
                                record_property: object) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        sids = list(pool.map(lambda i: one_session(fresh, i), range(WORKERS)))
    elapsed = time.monotonic() - started
    assert len(set(sids)) == WORKERS
    with fresh.client() as api:
        listed = api.get("/sessions", params={"label": "suite:concurrency", "limit": 100}).json()
        assert {s["id"] for s in listed["items"]} == set(sids)
    peaks = {name: fresh.peak_rss_kib(name) for name in SERVICES}
    assert all(v > 0 for v in peaks.values())
    line = ", ".join(f"{name} {kib / 1024:.1f} MiB" for name, kib in peaks.items())
    with capsys.disabled():
        print(f"\n32 concurrent sessions in {elapsed:.1f}s; peak RSS (VmHWM): {line}")
    assert callable(record_property)
    for name, kib in peaks.items():
        record_property(f"vmhwm_kib_{name}", kib)

