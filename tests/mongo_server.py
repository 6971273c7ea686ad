"""A real MongoDB wire-protocol server for the tests: SecantusDB on a free loopback port.

SecantusDB (PyPI `secantusdb`, import `secantus`; GPL-2.0, beta) is a dev-only
dependency.  It advertises a one-node replica set `secantus`, so transactions work.
If `LUCID_TEST_MONGODB_URL` names a real MongoDB (a replica set), the tests use
that instead, and the tests that stop and restart the server skip, saying so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import MongoClient

from sessions.client.launcher import free_port, log_tail

EXTERNAL_ENV = "LUCID_TEST_MONGODB_URL"
START_TIMEOUT = 30.0
# Short, so the failure tests see a lost server within seconds.
OPTIONS = "serverSelectionTimeoutMS=2000&connectTimeoutMS=2000&heartbeatFrequencyMS=1000"


def _die_with_parent() -> None:
    """In the child: be SIGKILLed when the test process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class MongoServer:
    """One database server; `url(db)` names a fresh database on it for one test."""

    def __init__(self, root: Path) -> None:
        self.external = os.environ.get(EXTERNAL_ENV)
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "secantus.log"
        self.data = root / "data"
        self.extra_args: list[str] = []  # e.g. SecantusDB's --tls-* flags (tests/e2e/test_tls.py)
        self.client_options: dict[str, Any] = {}  # what a client then needs (tls=True, ...)

    @property
    def can_restart(self) -> bool:
        return self.external is None

    def url(self, database: str | None = None) -> str:
        """Return a mongodb:// URL of a database (a fresh random name unless given)."""
        name = database or "lucid_" + uuid.uuid4().hex[:12]
        if self.external is not None:
            parts = urlsplit(self.external)
            return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        return f"mongodb://127.0.0.1:{self.port}/{name}?{OPTIONS}"

    def start(self) -> None:
        """Start SecantusDB on self.port (its data survives restarts) and wait until it answers.

        Call it from the thread that owns the test (not a worker thread): the server is
        killed when the thread that started it exits, so a killed test run leaks none.
        """
        if self.external is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "secantusd.toml"
        config.write_text("")  # an explicit empty config: no auto-discovered ~/.secantus file
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, a test-only module
                [sys.executable, "-m", "secantus", "--config", str(config),
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", str(self.data), "--log-level", "WARNING",
                 "--cache-size", "64M",
                 "--sync-on-commit", *self.extra_args],  # j: true means fsync'd, as mongod
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        self.wait_answering()

    def wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("SecantusDB exited:\n" + log_tail(self.log))
            try:
                with MongoClient(f"mongodb://127.0.0.1:{self.port}/",
                                 serverSelectionTimeoutMS=500, directConnection=True,
                                 **self.client_options) as c:
                    c.admin.command("ping")
                return
            except Exception:  # not up yet: poll again
                time.sleep(0.1)
        raise RuntimeError("SecantusDB did not answer in time:\n" + log_tail(self.log))

    def create_user(self, database: str, user: str, password: str) -> None:
        """Create a user of a database (SecantusDB then checks SCRAM credentials; no --auth)."""
        with MongoClient(self.url(database), directConnection=True) as c:
            c[database].command("createUser", user, pwd=password, roles=["readWrite"])

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its data stays for a restart."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        """Kill the server (its data is thrown away, so no clean shutdown is owed) and its data."""
        self.kill()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """The test database server of the whole run (started on first use, removed at the end)."""
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    try:
        yield server
    finally:
        server.remove()
