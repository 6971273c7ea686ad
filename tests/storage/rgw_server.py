"""A real Ceph RADOS Gateway for the tests: a one-node Ceph cluster on free loopback ports.

Debian's `ceph-mon ceph-osd radosgw ceph-common` (installed by `make rgw-deps`, which
`make test` runs) give one monitor, one OSD on `memstore` (in memory: nothing to format,
nothing left on disk) and radosgw, all bound to 127.0.0.1, auth none, pools of size 1,
every path (data, logs, sockets, pid files) inside a temp dir.  With auth none the
clients need `ms mon client mode = crc secure`, or radosgw waits 300 s for the monitor.
An S3 user with generated keys is made with `radosgw-admin`, and the bucket with a
request presigned by obstore.  If the binaries are missing or the cluster does not come
up, the tests that need it skip, naming the reason, unless `LUCID_REQUIRE_RGW=1` (CI)
turns that into a failure.  One cluster serves the whole test session.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.store import S3Store

from sessions.client.launcher import free_port, log_tail
from tests.mongo_server import _die_with_parent
from tests.storage.s3_server import BUCKET, REGION, _write_and_read_back
from tests.weed_server import S3Credentials

REQUIRE_ENV = "LUCID_REQUIRE_RGW"
START_TIMEOUT = 120.0
COMMAND_TIMEOUT = 60.0
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")
DAEMONS = ("mon", "osd", "rgw")

CONFIG = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
run dir = {root}/run
crash dir = {root}/crash
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
mon cluster log file = {root}/log/$cluster.$channel.log
keyring = {root}/keyring
[mon]
mon data = {root}/mon/$name
[osd]
osd objectstore = memstore
osd data = {root}/osd/$name
memstore device bytes = 1073741824
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
"""


def missing_binaries() -> list[str]:
    """Return the Ceph programs this server needs that are not on PATH."""
    return [name for name in BINARIES if shutil.which(name) is None]


class RgwServer(S3Credentials):
    """One Ceph cluster with radosgw; `url()` names a fresh prefix of its bucket for one test.

    `stop()` and `start()` stop and restart the gateway (the S3 server) alone: its data
    stays in the OSD, as it does in SeaweedFS over a restart of `S3Server`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.access_key = "LUCID" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.config = root / "ceph.conf"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.bootstrapped = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    def store(self) -> S3Store:
        return S3Store(BUCKET, endpoint=self.endpoint, region=REGION,
                       access_key_id=self.access_key, secret_access_key=self.secret_key,
                       virtual_hosted_style_request=False,
                       client_options={"allow_http": True, "timeout": timedelta(seconds=5)},
                       retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)})

    def start(self) -> None:
        """Make the cluster on first use; start whichever daemon is not running; wait until
        the bucket takes a write and reads it back."""
        if not self.bootstrapped:
            self._bootstrap()
        if "rgw" not in self.procs:
            self._spawn("rgw", "radosgw", "-n", "client.rgw")
        self.wait_answering()

    def _bootstrap(self) -> None:
        """Monitor, OSD, gateway, the S3 user and the bucket."""
        for part in ("run", "crash", "log", "mon/mon.a", "osd/osd.0", "rgw"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.config.write_text(CONFIG.format(fsid=fsid, root=self.root, mon_port=self.mon_port,
                                             rgw_port=self.rgw_port))
        monmap = self.root / "monmap"
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                  f"[v2:127.0.0.1:{self.mon_port}]", str(monmap))
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._spawn("mon", "ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "osd", "new", osd_uuid).strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._spawn("osd", "ceph-osd", "-i", osd_id)
        self._wait_osd_up()
        self._spawn("rgw", "radosgw", "-n", "client.rgw")
        self._wait_gateway()
        self._run("radosgw-admin", "user", "create", "--uid", "lucid", "--display-name", "lucid",
                  f"--access-key={self.access_key}", f"--secret-key={self.secret_key}")
        self._create_bucket()
        self.bootstrapped = True

    def _run(self, program: str, *args: str) -> str:
        """Run one Ceph command on this cluster's config; return its stdout."""
        done = subprocess.run(  # noqa: S603 - Debian's Ceph programs, fixed arguments
            [program, "-c", str(self.config), *args], cwd=self.root, capture_output=True,
            stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT, check=False,
            env={**os.environ, "CEPH_ARGS": "--connect-timeout 30"} if program == "ceph"
            else None)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args[:2])} failed ({done.returncode}): "
                               + done.stderr.decode(errors="replace")[-2000:])
        return done.stdout.decode()

    def _spawn(self, name: str, program: str, *args: str) -> None:
        with (self.root / "log" / f"{name}.out").open("ab") as out:
            self.procs[name] = subprocess.Popen(  # noqa: S603 - Debian's Ceph daemons
                [program, "-c", str(self.config), "-f", *args], cwd=self.root,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)

    def _check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"ceph {name} exited ({proc.returncode}):\n" + self.logs())

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_running()
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready in {START_TIMEOUT:.0f} s:\n" + self.logs())

    def _wait_osd_up(self) -> None:
        def up() -> bool:
            stat = json.loads(self._run("ceph", "osd", "stat", "--format", "json"))
            return bool(stat.get("num_up_osds", 0) >= 1)
        self._wait("the OSD", up)

    def _wait_gateway(self) -> None:
        def answers() -> bool:
            try:
                return httpx.get(self.endpoint, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        self._wait("radosgw", answers)

    def _create_bucket(self) -> None:
        """Create the bucket: a PUT on its URL, presigned by obstore (which has no such call)."""
        signed = obstore.sign(self.store(), "PUT", "", timedelta(minutes=5))
        answer = httpx.put(signed, timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"creating the bucket: {answer.status_code} {answer.text[:300]}")

    def wait_answering(self) -> None:
        store = self.store()
        self._wait("the bucket", lambda: _write_and_read_back(store))

    def stop(self) -> None:
        """Stop the gateway (SIGTERM, then SIGKILL); the cluster and its data stay."""
        proc = self.procs.pop("rgw", None)
        if proc is not None:
            _end(proc, signal.SIGTERM, 15)

    def remove(self) -> None:
        """Kill every daemon (the OSD keeps its data in memory) and remove the cluster's dir."""
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _end(proc, signal.SIGKILL, 10)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        """Return the tails of the daemons' logs."""
        return "\n".join(f"--- {path.name}\n{log_tail(path, 15)}"
                         for path in sorted((self.root / "log").glob("*")))


def _end(proc: subprocess.Popen[bytes], sig: signal.Signals, wait: float) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _unavailable(reason: str) -> None:
    message = f"radosgw UNAVAILABLE, Ceph RGW chunk-store tests SKIPPED: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 requires them)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RgwServer]:
    """The Ceph cluster of the whole run (started on first use, removed at the end)."""
    missing = missing_binaries()
    if missing:
        _unavailable(f"no {', '.join(missing)} on PATH (make rgw-deps: Debian's ceph-mon "
                     "ceph-osd radosgw ceph-common)")
    server = RgwServer(tmp_path_factory.mktemp("rgw"))
    try:
        server.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        server.remove()
        _unavailable(f"the one-node Ceph cluster did not start: {exc}")
    try:
        yield server
    finally:
        server.remove()
