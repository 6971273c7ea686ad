"""The three services as child processes on free loopback ports, each logging to a file.

What the benchmark (`bench/e2e.py`) and the end-to-end tests (`tests/e2e/`) both
need: free ports, the environment that wires the services to each other, and
starting a service and waiting until it answers, or stopping them all.  Each
service runs as `python -m sessions.client serve <name>`, exactly as deployed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

SERVICES = ("storage", "processor", "api")
"""In start order: each one's upstream answers before it starts."""

REPO = Path(__file__).resolve().parents[2]


class ServiceFailed(RuntimeError):
    """A service exited or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def service_env(*, data_dir: Path, ports: Mapping[str, int],
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a service's environment: this process's without LUCID_*, plus the wiring.

    `extra` (LUCID_* settings of the caller's choosing) is applied last.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "LUCID_DATA_DIR": str(data_dir),
        "LUCID_HOST": "127.0.0.1",
        "LUCID_STORAGE_PORT": str(ports["storage"]),
        "LUCID_PROCESSOR_PORT": str(ports["processor"]),
        "LUCID_API_PORT": str(ports["api"]),
        "LUCID_STORAGE_URL": url(ports["storage"]),
        "LUCID_PROCESSOR_URL": url(ports["processor"]),
    })
    env.update(extra or {})
    return env


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last `lines` lines of a log file ("" if there is none)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def spawn(name: str, *, env: Mapping[str, str], log: Path,
          **popen: Any) -> subprocess.Popen[bytes]:
    """Start `lucid-sessions serve <name>` with stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "sessions.client", "serve", name], cwd=REPO, env=dict(env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **popen)


def wait_ok(name: str, proc: subprocess.Popen[bytes], endpoint: str, *, timeout: float,
            log: Path) -> None:
    """Return once GET `endpoint` answers 200; raise ServiceFailed if `proc` exits first."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceFailed(f"{name} exited with {proc.returncode} while starting:\n"
                                + log_tail(log))
        try:
            last = httpx.get(endpoint, timeout=2.0, trust_env=False)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise ServiceFailed(f"{name}: {endpoint} not OK within {timeout}s ({last!r}):\n"
                        + log_tail(log))


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Terminate every process (the gateway first), killing any not gone in 10 s; empty procs."""
    for name in reversed(SERVICES):
        proc = procs.pop(name, None)
        if proc is None:
            continue
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
