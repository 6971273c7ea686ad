"""`lucid-sessions replay` as a user runs it: what the process loads, and what each failure says.

A replay from a plain-http gateway moves its bytes on a socket of its own
(sessions/client/_bulk.py) and reads an error body without a model, so it needs
neither pydantic nor httpx, let alone the services' web stack: about 0.1 s of
imports a replay no longer pays (README, Performance).  Each run here is a real CLI
process (`python -m sessions.client`) against the live node, through a wrapper that
records the modules the process holds when it exits, whatever its exit status.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import MIB, recorded_session, session_bytes

pytestmark = pytest.mark.e2e

HEAVY = frozenset({"pydantic", "pydantic_core", "httpx", "httpcore", "h11", "starlette",
                   "fastapi", "uvicorn"})
"""Packages a plain-http replay must not import, not even to report a failure."""

WRAPPER = """
import atexit, json, runpy, sys

def record(path=sys.argv[1]):
    with open(path, "w") as fh:
        json.dump(sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None}), fh)

atexit.register(record)
sys.argv = ["lucid-sessions", *sys.argv[2:]]
runpy.run_module("sessions.client", run_name="__main__", alter_sys=True)
"""
WRONG_TOKEN = "lucid_0123456789abcdef_" + "A" * 43  # noqa: S105 - well-formed, never issued
UNKNOWN = "0" * 26


def run(cluster: Cluster, tmp_path: Path, *args: str, token: str | None = None,
        url: str | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI with `args`; return the process and the top-level packages it loaded."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": url or cluster.url("api"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    if token is None:
        env["LUCID_TOKEN_FILE"] = str(cluster.data_dir / "secrets" / "admin.token")
    else:
        env["LUCID_TOKEN"] = token
    loaded = tmp_path / "loaded.json"
    loaded.unlink(missing_ok=True)
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-c", WRAPPER, str(loaded), *args], cwd=tmp_path, env=env, text=True,
        capture_output=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, set(json.loads(loaded.read_text()))


@pytest.fixture(scope="module")
def recorded(api: httpx.Client) -> tuple[str, bytes]:
    data = session_bytes(3 * MIB + 1001, seed=4242)
    return recorded_session(api, data)["id"], data


def test_a_replay_loads_neither_pydantic_nor_httpx(cluster: Cluster, tmp_path: Path,
                                                   recorded: tuple[str, bytes]) -> None:
    sid, data = recorded
    out = tmp_path / "out.rec"
    proc, loaded = run(cluster, tmp_path, "replay", sid, "-o", str(out))
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, "", f"wrote {len(data):,} bytes to {out}\n")
    assert out.read_bytes() == data
    assert {"sessions", "socket"} <= loaded  # the wrapper saw the replay's process
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_a_range_replay_with_progress_loads_neither(cluster: Cluster, tmp_path: Path,
                                                    recorded: tuple[str, bytes]) -> None:
    sid, data = recorded
    out = tmp_path / "part.rec"
    proc, loaded = run(cluster, tmp_path, "replay", sid, "-o", str(out), "--progress",
                       "--range", f"{MIB - 3}-{2 * MIB}")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data[MIB - 3:2 * MIB + 1]
    assert proc.stderr.endswith(f"MB/s   \nwrote {MIB + 4:,} bytes to {out}\n"), proc.stderr
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])  # nothing listens there once it is closed


@pytest.mark.parametrize(("case", "status", "expected"), [
    ("bad token", 1, "error: unauthorized: a valid bearer token is required\nhint: pass "
                     "--token-file (the local token is <data dir>/secrets/admin.token)\n"),
    ("unknown session", 1, "error: session_not_found: no such session\n"),
    ("range past the end", 1, "error: range_not_satisfiable: the requested range is outside "
                              "the session\n"),
    ("no gateway", 1, "error: connection_failed: cannot connect to {url} (is the gateway "
                      "running? try `lucid-sessions up`)\n"),
])
def test_a_failed_replay_says_why_and_leaves_no_file(
        cluster: Cluster, tmp_path: Path, recorded: tuple[str, bytes], case: str, status: int,
        expected: str) -> None:
    """The same exit status and lines as ever, no output or part file, and still no
    pydantic or httpx: an error body is read without a model."""
    sid, data = recorded
    out = tmp_path / "out.rec"
    args = ["replay", sid, "-o", str(out)]
    url = f"http://127.0.0.1:{_closed_port()}" if case == "no gateway" else None
    token = WRONG_TOKEN if case == "bad token" else None
    if case == "unknown session":
        args[1] = UNKNOWN
    if case == "range past the end":
        args += ["--range", f"{len(data) + 10}-"]
    proc, loaded = run(cluster, tmp_path, *args, token=token, url=url)
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "", expected.format(url=url))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_a_malformed_id_is_a_usage_error(cluster: Cluster, tmp_path: Path) -> None:
    proc, loaded = run(cluster, tmp_path, "replay", "not-an-id", "-o", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.endswith("replay: error: argument id: not a session id (26 characters "
                                "of Crockford base32)\n"), proc.stderr
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
