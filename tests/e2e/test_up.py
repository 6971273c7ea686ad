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

from sessions.loopback import REPO, SERVICES, free_port

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
    up = subprocess.Popen([sys.executable, "-m", "sessions.cli", "up", "--data-dir",  # noqa: S603
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
