"""The three services with storage's chunks on S3 (SeaweedFS, and Ceph radosgw, on loopback):
a session is uploaded, replayed and verified; with the object store stopped an upload
answers 503 and nothing unwritten is acknowledged; once it is back the session resumes
and verifies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.storage.config import Settings
from sessions.storage.s3store import open_s3_store
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    MIB,
    create_session,
    finalize,
    head_offset,
    patch,
    replay,
    session_bytes,
    upload,
)
from tests.e2e.test_cli import cli
from tests.storage.rgw_server import RgwServer
from tests.storage.s3_server import S3Server, s3_server, weed_binary  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_s3_server(tmp_path: Path, request: pytest.FixtureRequest,
                  ) -> Iterator[S3Server | RgwServer]:
    """An S3 server the test may stop and restart: a SeaweedFS of its own, or the run's Ceph
    cluster (whose gateway alone is stopped and restarted; it is running again afterwards)."""
    if request.param == "rgw":
        cluster: RgwServer = request.getfixturevalue("rgw_server")
        yield cluster
        cluster.start()
        return
    request.getfixturevalue("s3_server")  # skips with it
    binary = weed_binary()
    assert binary is not None
    server = S3Server(tmp_path / "s3", binary)
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def s3_cluster(tmp_path: Path, own_s3_server: S3Server | RgwServer,
               ) -> Iterator[tuple[Cluster, S3Server | RgwServer]]:
    """Storage on an S3 server the test stops and restarts."""
    server = own_s3_server
    key, secret = server.write_credentials(tmp_path / "s3-secrets")
    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster")
    cluster.extra_env["storage"] = {
        "LUCID_CHUNK_STORE_URL": server.url("lucid/e2e"), "LUCID_S3_ENDPOINT": server.endpoint,
        "LUCID_S3_ACCESS_KEY_FILE": str(key), "LUCID_S3_SECRET_KEY_FILE": str(secret)}
    with cluster.serving():
        yield cluster, server
    logs = "".join(cluster.log_text(name) for name in ("storage", "processor", "api"))
    assert server.secret_key not in logs and server.access_key not in logs


@pytest.mark.parametrize("own_s3_server", ["seaweedfs", "rgw"], indirect=True)
def test_upload_replay_verify_on_s3_and_an_outage(
        s3_cluster: tuple[Cluster, S3Server | RgwServer], tmp_path: Path) -> None:
    cluster, server = s3_cluster
    data = session_bytes(3 * MIB + 4321, seed=170)
    with cluster.client() as api:
        sid = create_session(api, {"store": "s3"})["id"]
        upload(api, sid, data[:2 * MIB], piece=MIB)
        assert not (cluster.data_dir / "storage" / "chunks").exists()  # no local chunk files

        server.stop()
        r = patch(api, sid, 2 * MIB, data[2 * MIB:])
        assert r.status_code == 503, (r.status_code, r.text)
        assert "Traceback" not in r.text
        server.start()
        assert head_offset(api, sid) == 2 * MIB  # nothing unwritten was acknowledged

        upload(api, sid, data, start=2 * MIB, piece=MIB)
        session = finalize(api, sid)
        assert session["offset"] == len(data)
        full = replay(api, sid)
        assert full.status_code == 200 and full.content == data
        part = replay(api, sid, f"bytes={MIB - 2}-{MIB + 2}")
        assert part.status_code == 206 and part.content == data[MIB - 2:MIB + 3]

    workdir = tmp_path / "cli"
    workdir.mkdir()
    verified = cli(cluster, workdir, "verify", sid)
    assert "OK" in verified.stdout and "FAIL" not in verified.stdout
    settings = Settings(mode="local", data_dir=tmp_path, chunk_store_url=server.url("lucid/e2e"),
                        s3_endpoint=server.endpoint,
                        s3_access_key_file=tmp_path / "s3-secrets" / "s3-access-key",
                        s3_secret_key_file=tmp_path / "s3-secrets" / "s3-secret-key")
    location = settings.chunk_store_location()
    assert location is not None
    store = open_s3_store(location)
    assert asyncio.run(store.session_ids()) == [sid]  # the chunks are in the bucket
