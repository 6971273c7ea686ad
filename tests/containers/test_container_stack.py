"""The three images built and run for real: docker-compose.pi.yml on a local engine.

The README's Pi steps, with only the documented overrides: local image tags built on
stand-in bases (`make images-local`), the host-network override file
(tests/containers/compose.host.yml) and, since no MongoDB image can be pulled here, the
test MongoDB server (SecantusDB, tests/mongo_server.py) on the host's loopback, named by
the same `metadata_url` secret (LUCID_METADATA_URL_FILE) that names the Pi's MongoDB.  The
stack runs twice: on that MongoDB, and with SQLite on the chunk volume (a sqlite:/// URL
in the same secret).  Each time: upload -> finalize -> replay -> verify through the
published HTTPS port with the CLI (trusting the certificate of `make secrets` by CA file
and by public-key pin) and curl, the containers' hardening checked from the host, and a
teardown that leaves nothing.  On SQLite also a backup of the chunk volume restored into
a fresh volume (the MongoDB backup, mongodump, is documented but untested here).

Without an engine (not root, no Debian packages) every test here skips and says why;
with LUCID_REQUIRE_CONTAINERS=1 (as .ci/run sets it) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from sessions.client import launcher
from sessions.core import NoteSigner
from tests.containers.support import DOCKER, HERE, ROOT, run, start_engine
from tests.mongo_server import MongoServer

COMPOSE_BIN = str(Path(sys.executable).parent / "docker-compose")
# A prefix of this run's own: test runs sharing an engine (other checkouts) must not retag
# each other's images between a build and `compose up`.
PREFIX = f"lucid-test-{secrets.token_hex(4)}/"
ARCH = "amd64"
SERVICES = ("storage", "processor", "api")
PAYLOAD = 5 * 1024 * 1024 + 12345
UP_TIMEOUT = 240
MONGO_DB = "lucid"
SQLITE_URL = "sqlite:////data/storage/metadata.sqlite3"

pytestmark = pytest.mark.containers


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start the engine and build the three images for amd64; yield their tag prefix."""
    start_engine()
    log = tmp_path_factory.mktemp("build") / "images-local.log"
    with log.open("w") as out:
        build = subprocess.run(["make", "-C", str(ROOT), "images-local",  # noqa: S603, S607
                                f"LOCAL_ARCH={ARCH}", f"LOCAL_PREFIX={PREFIX}"],
                               stdout=out, stderr=subprocess.STDOUT, check=False, timeout=1800)
    assert build.returncode == 0, log.read_text()[-6000:]
    yield PREFIX
    tags = [f"{PREFIX}{name}:{ARCH}" for name in ("chunk-processor", "session-storage",
                                                  "session-api")]
    run([DOCKER, "rmi", *tags], check=False)  # BuildKit's cache keeps the layers


@dataclass
class Stack:
    project: str
    directory: Path
    ports: dict[str, int]
    metadata: str  # "mongo" or "sqlite"
    pin: str  # the certificate's public-key pin, as `make secrets` prints it
    mongo_url: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IMAGE_PREFIX": PREFIX,
                "TAG": ARCH, **{f"LUCID_TEST_{n.upper()}_PORT": str(p)
                                for n, p in self.ports.items()}}

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([COMPOSE_BIN, "-p", self.project, "--project-directory", str(self.directory),
                    "-f", str(ROOT / "docker-compose.pi.yml"),
                    "-f", str(HERE / "compose.host.yml"), *args], check=check, env=self.env)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no {service} container"
        return cid

    def inspect(self, service: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(
            run([DOCKER, "inspect", self.container(service)]).stdout)
        return data[0]

    def exec(self, service: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, "exec", self.container(service), *cmd], check=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports['api']}"

    @property
    def cert(self) -> Path:
        return self.directory / "secrets" / "tls-cert.pem"

    def cli(self, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the CLI against the published port, trusting the certificate of `make secrets`
        as the README says (LUCID_CACERT) unless `extra` says otherwise."""
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        env.update({"LUCID_CACERT": str(self.cert), "LUCID_URL": self.url, "NO_PROXY": "127.0.0.1",
                    "LUCID_TOKEN_FILE": str(self.directory / "secrets" / "admin.token"), **extra})
        return run([sys.executable, "-m", "sessions.client", *args], env=env, check=check)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
            ids = run([DOCKER, *kind, "-q", "--filter", label]).stdout.split()
            found += [f"{kind[0]} {i}" for i in ids]
        return found


@pytest.fixture(scope="module", params=["mongo", "sqlite"])
def stack(images: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The README's first deployment, with the documented test overrides; torn down after."""
    metadata: str = request.param
    directory = tmp_path_factory.mktemp(f"pi-{metadata}")
    secret_dir = directory / "secrets"
    secret_dir.mkdir(mode=0o700)
    mongo: MongoServer | None = None
    mongo_url = None
    # The only secrets that differ from the Pi's: the metadata URL names the test server on
    # the host's loopback (credentials checked as on the Pi: user lucid, authSource admin),
    # or SQLite on the chunk volume; `make secrets` then keeps the files it finds.
    if metadata == "mongo":
        mongo = MongoServer(directory / "mongo")
        mongo.start()
        password = secrets.token_urlsafe(24)
        with MongoClient(f"mongodb://127.0.0.1:{mongo.port}/", directConnection=True) as c:
            c.admin.command("createUser", "lucid", pwd=password,
                            roles=[{"role": "root", "db": "admin"}])
        (secret_dir / "mongo-password").write_text(password + "\n")
        # SecantusDB's one-node replica set is named `secantus` (the Pi's is rs0)
        mongo_url = (f"mongodb://lucid:{password}@127.0.0.1:{mongo.port}/{MONGO_DB}"
                     "?replicaSet=secantus&authSource=admin")
        (secret_dir / "metadata-url").write_text(mongo_url + "\n")
    else:
        (secret_dir / "metadata-url").write_text(SQLITE_URL + "\n")
    made = run(["make", "--no-print-directory", "-C", str(ROOT), "secrets",
                f"SECRETS_DIR={secret_dir}"]).stdout  # the README's first step
    pin = made.split("(--pin-sha256): ")[1].split()[0]
    ports = {name: launcher.free_port() for name in SERVICES}
    s = Stack(f"lucid-test-{secrets.token_hex(4)}", directory, ports, metadata, pin, mongo_url)
    try:
        up = s.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), check=False)
        if up.returncode != 0:
            logs = s.compose("logs", "--no-color", check=False)
            pytest.fail(f"compose up failed:\n{up.stderr[-3000:]}\n{logs.stdout[-6000:]}")
        yield s
    finally:
        s.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        if mongo is not None:
            mongo.remove()


def test_all_three_are_healthy(stack: Stack) -> None:
    for service in SERVICES:
        state = stack.inspect(service)["State"]
        assert isinstance(state, dict) and state["Health"]["Status"] == "healthy", service


def test_published_port_speaks_verified_https(stack: Stack) -> None:
    curl = ["curl", "-sS", "--fail", "--noproxy", "*"]
    ok = run([*curl, "--cacert", str(stack.cert), f"{stack.url}/health"])
    assert json.loads(ok.stdout)["status"] == "ok"
    unverified = run([*curl, f"{stack.url}/health"], check=False)
    assert unverified.returncode == 60, "a certificate no CA vouches for must be refused"
    plain = run([*curl, f"http://127.0.0.1:{stack.ports['api']}/health"], check=False)
    assert plain.returncode != 0
    pinned = run([*curl, "-k", "--pinnedpubkey", stack.pin, f"{stack.url}/health"], check=False)
    assert pinned.returncode == 0, pinned.stderr
    # the CLI: by CA file (the README's LUCID_CACERT), by pin, and refused with neither
    assert stack.cli("ls", "--pin-sha256", stack.pin, LUCID_CACERT="").returncode == 0
    refused = stack.cli("ls", check=False, LUCID_CACERT="")
    assert refused.returncode == 1 and "error: tls_untrusted:" in refused.stderr


def test_upload_finalize_replay_verify_byte_identical(stack: Stack, tmp_path: Path) -> None:
    original = tmp_path / "recording.bin"
    original.write_bytes(os.urandom(PAYLOAD))
    session = stack.cli("upload", str(original)).stdout.strip().splitlines()[-1]
    show = json.loads(stack.cli("show", session).stdout)
    assert show["state"] == "completed" and show["offset"] == PAYLOAD
    replayed = tmp_path / "replayed.bin"
    stack.cli("replay", session, "-o", str(replayed))
    assert replayed.read_bytes() == original.read_bytes()
    signing = (stack.directory / "secrets" / "signing.key").read_text().strip()
    key = NoteSigner.from_key_text(signing).verifier().key_text()
    verified = stack.cli("verify", session, "--key", key).stdout
    assert verified.startswith(f"OK: session {session}:") and "signature ok; root ok" in verified


def test_containers_run_as_65532_on_a_read_only_root_without_a_shell(stack: Stack) -> None:
    for service in SERVICES:
        info = stack.inspect(service)
        host_config, state = info["HostConfig"], info["State"]
        assert isinstance(host_config, dict) and isinstance(state, dict)
        assert host_config["ReadonlyRootfs"] is True, service
        assert host_config["CapDrop"] == ["ALL"], service
        status = Path(f"/proc/{state['Pid']}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {"65532"}, (service, uids)
        for shell in ("/bin/sh", "/bin/bash", "sh"):
            assert stack.exec(service, shell, "-c", "true").returncode != 0, (service, shell)
        write = stack.exec(service, "/usr/bin/python3", "-c", "open('/opt/lucid/x', 'w')")
        assert write.returncode != 0 and "Read-only file system" in write.stderr, service


def test_only_the_processor_holds_the_master_key(stack: Stack) -> None:
    probe = ("import os, sys; sys.exit(0 if os.path.exists('/run/secrets/master_key') "
             "or os.path.exists('/run/secrets/signing_key') else 3)")
    held = {s for s in SERVICES if stack.exec(s, "/usr/bin/python3", "-c", probe).returncode == 0}
    assert held == {"processor"}


def test_each_image_holds_only_its_own_service(stack: Stack) -> None:
    probe = ("import importlib.util as u, sys; "
             "print(','.join(m for m in ('sessions.api', 'sessions.processor', "
             "'sessions.storage', 'sessions.client', 'tests', 'bench') if u.find_spec(m)))")
    for service in SERVICES:
        result = stack.exec(service, "/usr/bin/python3", "-c", probe)
        assert result.stdout.strip() == f"sessions.{service}", service


def test_metadata_lives_in_the_store_the_secret_names(stack: Stack, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(4096))
    session = stack.cli("upload", str(small)).stdout.split()[-1]
    probe = "import os, sys; sys.exit(0 if os.path.exists('/data/storage/metadata.sqlite3') else 3)"
    has_sqlite = stack.exec("storage", "/usr/bin/python3", "-c", probe).returncode == 0
    if stack.metadata == "sqlite":
        assert has_sqlite
        return
    assert stack.mongo_url is not None and not has_sqlite
    with MongoClient(stack.mongo_url, serverSelectionTimeoutMS=5000) as client:
        doc = client[MONGO_DB]["sessions"].find_one({"_id": session})
        assert doc is not None and doc["state"] == "completed", doc
        assert client[MONGO_DB]["chunks"].count_documents({}) >= 1


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_backup_and_restore_of_the_chunk_volume(stack: Stack, tmp_path: Path) -> None:
    """The README's backup: stop, tar the chunk volume (chunks and, here, the SQLite
    metadata), and restore it into a fresh volume; sessions then replay byte-identical, and a
    session erased after the backup comes back (the README says to erase it again)."""
    kept, erased = tmp_path / "kept.bin", tmp_path / "erased.bin"
    kept.write_bytes(os.urandom(PAYLOAD // 2))
    erased.write_bytes(os.urandom(1000))
    kept_id = stack.cli("upload", str(kept)).stdout.split()[-1]
    erased_id = stack.cli("upload", str(erased)).stdout.split()[-1]
    builder = run(["bash", str(HERE / "bases.sh"), ARCH]).stdout.split()[0]
    volume = f"{stack.project}_chunks"
    backup = tmp_path / "backup"
    backup.mkdir()

    def helper(*cmd: str, mode: str) -> None:
        run([DOCKER, "run", "--rm", "--network", "none", "-v", f"{volume}:/data:{mode}",
             "-v", f"{backup}:/backup", builder, *cmd])

    stack.compose("stop")
    helper("tar", "--numeric-owner", "-C", "/data", "-cf", "/backup/chunks.tar", ".", mode="ro")
    stack.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT))
    stack.cli("rm", erased_id)
    stack.compose("down", "--volumes")  # the disk is lost
    stack.compose("up", "--no-start")
    helper("tar", "--numeric-owner", "-C", "/data", "-xpf", "/backup/chunks.tar", mode="rw")
    stack.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT))
    for session, original in ((kept_id, kept), (erased_id, erased)):
        out = tmp_path / f"{session}.replayed"
        stack.cli("replay", session, "-o", str(out))
        assert out.read_bytes() == original.read_bytes()


def test_teardown_leaves_nothing(stack: Stack) -> None:
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    deadline = time.monotonic() + 30
    while (left := stack.leftovers()) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == []
