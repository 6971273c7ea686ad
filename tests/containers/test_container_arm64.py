"""One full arm64 build, run under qemu: the storage image answers /health.

The Pi's architecture cannot run here natively: qemu-user-static (registered by
tests/containers/engine.sh) runs the arm64 stand-in bases and the image built on them.
The 20.10 engine records an imported arm64 image as amd64, so neither the build nor the
run passes --platform; the binaries inside are aarch64 all the same, as the probe shows.

An arm64 debootstrap runs its second stage under qemu: 10-20 minutes on a busy 2-core
machine, once per machine (the bases are cached under /var/cache/lucid-test-bases).  A
developer's `make test` runs these tests when the arm64 bases are cached (`make
images-local LOCAL_ARCH=arm64` once) and otherwise skips them, saying so loudly.  CI
(`.ci/run`, LUCID_REQUIRE_CONTAINERS=1) and LUCID_CONTAINERS_ARM64=1 never skip: they build
the bases when they are missing, so CI always runs the arm64 build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sessions.client import launcher
from tests.containers.support import DOCKER, HERE, ROOT, run, start_engine, unavailable

pytestmark = pytest.mark.containers

IMAGE = "lucid-test/session-storage:arm64"
HEALTH_TIMEOUT = 300
# The image's own healthcheck command, with emulation's timing: under qemu on a busy
# 2-core machine one `python3 -c "import urllib.request ..."` start takes 5-10 s, longer
# than the image's 5 s timeout (sized for a native Pi 5), so every probe timed out and the
# container was reported unhealthy while /health answered.
QEMU_HEALTH = ["--health-interval", "10s", "--health-timeout", "60s",
               "--health-retries", "5", "--health-start-period", "120s"]


@pytest.fixture(scope="module")
def arm64_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    start_engine()
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        unavailable("no qemu-aarch64 binfmt handler (engine.sh could not register one)")
    required = "1" in (os.environ.get("LUCID_CONTAINERS_ARM64"),
                       os.environ.get("LUCID_REQUIRE_CONTAINERS"))
    if not required:
        cached = subprocess.run(["bash", str(HERE / "bases.sh"), "arm64"],  # noqa: S603, S607
                                capture_output=True, text=True, check=False, timeout=900,
                                env={**os.environ, "LUCID_BASES_CACHED_ONLY": "1"})
        if cached.returncode == 4:
            message = ("ARM64 CONTAINER TESTS NOT RUN: the arm64 stand-in bases are not cached "
                       "(building them takes 10-20 min under qemu): run `make images-local "
                       "LOCAL_ARCH=arm64` once, or set LUCID_CONTAINERS_ARM64=1 (as CI's "
                       "LUCID_REQUIRE_CONTAINERS=1 does)")
            print(f"\n*** {message} ***", file=sys.stderr)
            pytest.skip(message)
    log = tmp_path_factory.mktemp("build-arm64") / "images-local.log"
    with log.open("w") as out:
        build = subprocess.run(["make", "-C", str(ROOT), "images-local",  # noqa: S603, S607
                                "LOCAL_ARCH=arm64", "LOCAL_PREFIX=lucid-test/",
                                "LOCAL_IMAGES=storage:session-storage"],
                               stdout=out, stderr=subprocess.STDOUT, check=False, timeout=3600)
    assert build.returncode == 0, log.read_text()[-6000:]
    return IMAGE


def test_arm64_image_holds_aarch64_wheels(arm64_image: str) -> None:
    probe = ("import platform, cryptography.hazmat.bindings._rust, zstandard, pydantic_core, "
             "uvloop, httptools; print(platform.machine())")
    result = run([DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "/usr/bin/python3",
                  arm64_image, "-c", probe])
    assert result.stdout.strip() == "aarch64"


def test_arm64_storage_answers_health_under_qemu(arm64_image: str, tmp_path: Path) -> None:
    token = tmp_path / "service.token"
    token.write_text(os.urandom(32).hex() + "\n")
    os.chmod(token, 0o444)
    port = launcher.free_port()
    name = f"lucid-test-arm64-{port}"
    run([DOCKER, "run", "-d", "--name", name, "--network", "host", "--read-only", *QEMU_HEALTH,
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
         "--tmpfs", "/tmp", "--tmpfs", "/data:uid=65532,gid=65532,mode=0700",  # noqa: S108
         "-v", f"{token}:/run/secrets/service_token:ro",
         "-e", "LUCID_HOST=127.0.0.1", "-e", f"LUCID_STORAGE_PORT={port}",
         "-e", "LUCID_SERVICE_TOKEN_FILE=/run/secrets/service_token", arm64_image])
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        status = ""
        while time.monotonic() < deadline:
            state = json.loads(run([DOCKER, "inspect", "-f", "{{json .State}}", name]).stdout)
            assert state["Running"], run([DOCKER, "logs", name], check=False).stderr[-3000:]
            status = state.get("Health", {}).get("Status", "")
            if status == "healthy":
                break
            time.sleep(3)
        assert status == "healthy", run([DOCKER, "logs", name], check=False).stderr[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:  # noqa: S310
            assert json.load(resp) == {"status": "ok", "service": "storage"}
    finally:
        run([DOCKER, "rm", "-f", "-v", name], check=False)
