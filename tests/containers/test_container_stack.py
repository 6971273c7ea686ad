"""The three images built and run for real: docker-compose.pi.yml on a local engine.

The README's Pi steps, with only the documented overrides: local image tags built on
stand-in bases (`make images-local`), the host-network override file
(tests/containers/compose.host.yml) and SQLite instead of MongoDB (no image can be
pulled here).  Then: upload -> finalize -> replay -> verify through the published HTTPS
port with the CLI and curl, the containers' hardening checked from the host, a backup
of the chunk volume restored into a fresh volume, and a teardown that leaves nothing.

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

from sessions import loopback
from sessions.core import NoteSigner
from tests.containers.support import DOCKER, HERE, ROOT, run, start_engine

COMPOSE_BIN = str(Path(sys.executable).parent / "docker-compose")
PREFIX = "lucid-test/"
ARCH = "amd64"
SERVICES = ("storage", "processor", "api")
PAYLOAD = 5 * 1024 * 1024 + 12345
UP_TIMEOUT = 240

pytestmark = pytest.mark.containers


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Start the engine and build the three images for amd64; return their tag prefix."""
    start_engine()
    log = tmp_path_factory.mktemp("build") / "images-local.log"
    with log.open("w") as out:
        build = subprocess.run(["make", "-C", str(ROOT), "images-local",  # noqa: S603, S607
                                f"LOCAL_ARCH={ARCH}", f"LOCAL_PREFIX={PREFIX}"],
                               stdout=out, stderr=subprocess.STDOUT, check=False, timeout=1800)
    assert build.returncode == 0, log.read_text()[-6000:]
    return PREFIX


@dataclass
class Stack:
    project: str
    directory: Path
    ports: dict[str, int]

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

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SSL_CERT_FILE": str(self.cert), "LUCID_URL": self.url,
               "LUCID_TOKEN_FILE": str(self.directory / "secrets" / "admin.token")}
        return run([sys.executable, "-m", "sessions.cli", *args], env=env)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
            ids = run([DOCKER, *kind, "-q", "--filter", label]).stdout.split()
            found += [f"{kind[0]} {i}" for i in ids]
        return found


@pytest.fixture(scope="module")
def stack(images: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The README's first deployment, with the documented test overrides; torn down after."""
    directory = tmp_path_factory.mktemp("pi")
    secret_dir = directory / "secrets"
    secret_dir.mkdir(mode=0o700)
    # SQLite on the chunk volume instead of MongoDB (the only secret that differs here)
    (secret_dir / "metadata-url").write_text("sqlite:////data/storage/metadata.sqlite3\n")
    run([sys.executable, str(ROOT / "containers" / "init_secrets.py"), str(secret_dir),
         "--hostname", "127.0.0.1"])
    ports = {name: loopback.free_port() for name in SERVICES}
    s = Stack(f"lucid-test-{secrets.token_hex(4)}", directory, ports)
    try:
        up = s.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), check=False)
        if up.returncode != 0:
            logs = s.compose("logs", "--no-color", check=False)
            pytest.fail(f"compose up failed:\n{up.stderr[-3000:]}\n{logs.stdout[-6000:]}")
        yield s
    finally:
        s.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


def test_all_three_are_healthy(stack: Stack) -> None:
    for service in SERVICES:
        state = stack.inspect(service)["State"]
        assert isinstance(state, dict) and state["Health"]["Status"] == "healthy", service


def test_published_port_speaks_verified_https(stack: Stack) -> None:
    ok = run(["curl", "-sS", "--fail", "--cacert", str(stack.cert), f"{stack.url}/health"])
    assert json.loads(ok.stdout)["status"] == "ok"
    unverified = run(["curl", "-sS", "--fail", f"{stack.url}/health"], check=False)
    assert unverified.returncode == 60, "a certificate no CA vouches for must be refused"
    plain = run(["curl", "-sS", "--fail", f"http://127.0.0.1:{stack.ports['api']}/health"],
                check=False)
    assert plain.returncode != 0


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
             "'sessions.storage', 'tests', 'bench') if u.find_spec(m)))")
    for service in SERVICES:
        result = stack.exec(service, "/usr/bin/python3", "-c", probe)
        assert result.stdout.strip() == f"sessions.{service}", service


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
