"""The benchmark's bulk client (sendfile up, recv_into down) against the real gateway."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from bench.client import ClientError, patch_file, replay_sha256
from tests.e2e.conftest import Cluster
from tests.e2e.support import CHUNK, create_session, finalize

pytestmark = pytest.mark.e2e


def test_a_file_sent_with_sendfile_replays_to_the_same_digest(
        cluster: Cluster, api: httpx.Client, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 12345)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    base, token = cluster.url("api") + "/v1", cluster.admin_token
    sid = create_session(api)["id"]
    first = patch_file(base, token, sid, path, offset=0, length=CHUNK, timeout=30)
    rest = patch_file(base, token, sid, path, offset=CHUNK, length=len(data) - CHUNK,
                      timeout=30)
    assert first["offset"] == CHUNK and rest["offset"] == len(data)
    finalize(api, sid)
    assert replay_sha256(base, token, sid, timeout=30) == (
        len(data), hashlib.sha256(data).hexdigest())


def test_refusals_come_back_as_client_errors_with_the_gateways_answer(
        cluster: Cluster, api: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(b"x" * 1000)
    base, token = cluster.url("api") + "/v1", cluster.admin_token
    sid = create_session(api)["id"]
    with pytest.raises(ClientError, match="409.*offset_mismatch"):
        patch_file(base, token, sid, path, offset=500, length=500, timeout=30)
    with pytest.raises(ClientError, match="401"):
        patch_file(base, "not-the-token", sid, path, offset=0, length=1000, timeout=30)
    with pytest.raises(ClientError, match="404"):
        replay_sha256(base, token, "0" * 26, timeout=30)
