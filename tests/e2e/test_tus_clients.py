"""Stock tus clients against the real services: tus-js-client 4.3.1 (Node) and tuspy.

Each creates an upload, sends it in several chunk-sized requests, is interrupted,
resumes from a NEW process, and completes; the session is then finalized by the
upload itself, replays byte-identical and verifies.  tus-js-client is installed
by `make test` (`npm ci` in tests/tus/); without node the JS test skips, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import CHUNK, session_bytes

pytestmark = pytest.mark.e2e

CLIENTS = Path(__file__).resolve().parents[1] / "tus"
SIZE = 4 * CHUNK + 12345  # five requests at the chunk size, the last one short
STOP = 2 * CHUNK
UPPY_LABELS = {"relative_path": "null", "name": "desk.rec", "type": "video/x-lucid",
               "filetype": "video/x-lucid", "filename": "desk.rec"}


def run(cluster: Cluster, *argv: str) -> dict[str, Any]:
    """Run one client process to its end; return the JSON line it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False,  # noqa: S603 - our own scripts
                          env={**os.environ, "LUCID_TOKEN": cluster.admin_token})
    assert proc.returncode == 0, f"{argv[:2]} failed:\n{proc.stdout}\n{proc.stderr}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("SKIPPED LOUDLY: node is not installed, so tus-js-client cannot run "
                    "(install Node.js >= 18; `make test` then runs `npm ci` in tests/tus)")
    if not (CLIENTS / "node_modules" / "tus-js-client" / "package.json").exists():
        pytest.skip("SKIPPED LOUDLY: tests/tus/node_modules is missing: run `make test` "
                    "(or `npm ci --prefix tests/tus`) to install tus-js-client")
    return node


def check_complete(api: httpx.Client, url: str, data: bytes) -> None:
    """The upload's session is completed, replays byte-identical and verifies."""
    sid = url.rstrip("/").split("/")[-2]
    session = api.get(f"sessions/{sid}").json()
    assert session["state"] == "completed", session
    assert session["upload_length"] == len(data) and session["offset"] == len(data)
    assert session["labels"] == UPPY_LABELS
    assert api.get(f"sessions/{sid}/replay").content == data
    report = api.post(f"sessions/{sid}/verify").json()
    assert report["ok"] and report["root_ok"] and report["signature_ok"], report


def check_interrupted(api: httpx.Client, url: str, offset: int) -> None:
    sid = url.rstrip("/").split("/")[-2]
    session = api.get(f"sessions/{sid}").json()
    assert session["state"] == "recording" and session["offset"] == offset
    assert STOP <= offset < SIZE and offset % CHUNK == 0  # whole chunks only: no short ones
    assert session["chunk_count"] == offset // CHUNK


def test_tuspy_creates_is_interrupted_resumes_in_a_new_process_and_completes(
        cluster: Cluster, api: httpx.Client, tmp_path: Path) -> None:
    data = session_bytes(SIZE, 31)
    path = tmp_path / "desk.rec"
    path.write_bytes(data)
    script = str(CLIENTS / "tuspy_upload.py")
    endpoint = cluster.url("api") + "/v1/sessions"
    db = str(tmp_path / "tuspy-urls.json")
    first = run(cluster, sys.executable, script, endpoint, str(path), str(CHUNK), db, str(STOP))
    check_interrupted(api, first["url"], first["offset"])
    second = run(cluster, sys.executable, script, endpoint, str(path), str(CHUNK), db)
    assert second["url"] == first["url"] and second["offset"] == SIZE
    check_complete(api, second["url"], data)


def test_tus_js_client_creates_is_interrupted_resumes_in_a_new_process_and_completes(
        cluster: Cluster, api: httpx.Client, tmp_path: Path) -> None:
    node = node_or_skip()
    data = session_bytes(SIZE, 32)
    path = tmp_path / "desk.rec"
    path.write_bytes(data)
    script = str(CLIENTS / "tus_js_upload.cjs")
    endpoint = cluster.url("api") + "/v1/sessions"
    first = run(cluster, node, script, "start", endpoint, str(path), str(CHUNK), str(STOP))
    assert first["done"] is False
    url = first["url"]
    assert url.startswith(cluster.url("api") + "/v1/sessions/")
    check_interrupted(api, url, first["offset"])
    second = run(cluster, node, script, "resume", url, str(path), str(CHUNK))
    assert second["done"] is True and second["url"] == url
    check_complete(api, url, data)


def test_tus_js_client_uploads_a_stream_of_unknown_length(cluster: Cluster, api: httpx.Client,
                                                          tmp_path: Path) -> None:
    node = node_or_skip()
    data = session_bytes(2 * CHUNK + 77, 33)
    path = tmp_path / "stream.rec"
    path.write_bytes(data)
    out = run(cluster, node, str(CLIENTS / "tus_js_upload.cjs"), "defer",
              cluster.url("api") + "/v1/sessions", str(path), str(CHUNK))
    sid = out["url"].rstrip("/").split("/")[-2]
    session = api.get(f"sessions/{sid}").json()
    assert session["state"] == "completed" and session["upload_length"] == len(data)
    assert api.get(f"sessions/{sid}/replay").content == data
    assert api.post(f"sessions/{sid}/verify").json()["ok"]
