"""`lucid-sessions up`: three real processes, stopped cleanly however the signals arrive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from sessions.client.launcher import REPO, SERVICES, free_port
from tests.mongo_server import MongoServer

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_stops_all_three_on_a_burst_of_signals(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    env.update({f"LUCID_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env["PYTHONPATH"] = str(REPO)
    up = subprocess.Popen([sys.executable, "-m", "sessions.client", "up", "--data-dir",  # noqa: S603
                           str(tmp_path / "data")], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{ports['api']}/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            time.sleep(0.2)
        children = _children(up.pid)
        assert len(children) == 3
        # A burst, as repeated `pkill`s or Ctrl-Cs deliver: a handler interrupted by the
        # next signal must not deadlock (it did, with threading.Event, before StopFlag).
        for i in range(300):
            up.send_signal(signal.SIGTERM if i % 2 else signal.SIGINT)
        assert up.wait(timeout=30) == 0
        assert not [pid for pid in children if _running(pid)]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_up_on_a_mongodb_metadata_url(tmp_path: Path, mongo_server: MongoServer) -> None:
    """`lucid-sessions up` with LUCID_METADATA_URL: sessions are kept in MongoDB, not SQLite."""
    ports = {name: free_port() for name in SERVICES}
    url = mongo_server.url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    env.update({f"LUCID_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update(PYTHONPATH=str(REPO), LUCID_METADATA_URL=url)
    data = tmp_path / "data"
    up = subprocess.Popen([sys.executable, "-m", "sessions.client", "up", "--data-dir",  # noqa: S603
                           str(data)], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        api = f"http://127.0.0.1:{ports['api']}"
        deadline = time.monotonic() + 60
        while not _ok(api + "/ready"):
            assert up.poll() is None and time.monotonic() < deadline, (
                up.stdout.read() if up.stdout else "")
            time.sleep(0.2)
        token = (data / "secrets" / "admin.token").read_text().strip()
        made = httpx.post(api + "/v1/sessions", json={"labels": {"via": "up"}},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert made.status_code == 201, made.text
        with MongoClient(url) as client:
            doc = client.get_default_database().sessions.find_one({"_id": made.json()["id"]})
        assert doc is not None and doc["labels"] == ["via=up"]
        assert not (data / "storage" / "metadata.sqlite3").exists()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
