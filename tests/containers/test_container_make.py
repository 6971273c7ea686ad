"""`make images`, `make images-multiarch` and `make pin-bases` as far as they go without a registry.

No registry can be reached here and buildx is not obtainable, so these targets cannot run
for real.  What is checked is the Makefile's side: a stand-in `docker` on PATH records the
commands `make` runs (the buildx invocations, tags, platforms, --push) and, for
`pin-bases`, answers `buildx imagetools inspect` with a digest, so the rewrite of the
Dockerfiles' base arguments is checked for real (and a digest that cannot be resolved
leaves them alone).  What buildx and the registry then do is untested here (README).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"processor": "chunk-processor", "storage": "session-storage", "api": "session-api"}
BASES = ("python:3.13-slim-trixie", "gcr.io/distroless/python3-debian13:nonroot")

pytestmark = pytest.mark.containers

FAKE_DOCKER = """#!/usr/bin/env python3
import hashlib, json, os, sys
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:4] == ["buildx", "imagetools", "inspect"]:
    if os.environ.get("FAKE_DOCKER_DIGEST") == "none":
        sys.exit(1)
    seed = sys.argv[4] + os.environ.get("FAKE_DOCKER_DIGEST", "")
    print('"sha256:' + hashlib.sha256(seed.encode()).hexdigest() + '"')
"""


def make(directory: Path, tmp_path: Path, *args: str,
         digest: str = "") -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run `make ARGS` in `directory` with the stand-in docker first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(log),
           "FAKE_DOCKER_DIGEST": digest}
    for var in ("IMAGE_PREFIX", "TAG", "PLATFORMS", "MAKEFLAGS"):
        env.pop(var, None)
    result = subprocess.run(["make", "--no-print-directory", "-C", str(directory), *args],  # noqa: S603, S607
                            env=env, capture_output=True, text=True, check=False, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def builds(calls: list[list[str]]) -> dict[str, list[str]]:
    """Return each buildx build's arguments, keyed by its Dockerfile's service."""
    found = {}
    for call in calls:
        assert call[:2] == ["buildx", "build"], call
        found[call[call.index("-f") + 1].removeprefix("sessions/Dockerfile.")] = call
    return found


def test_make_images_builds_arm64_and_pushes_the_three_tags(tmp_path: Path) -> None:
    result, calls = make(ROOT, tmp_path, "images")
    assert result.returncode == 0, result.stderr
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S603, S607
                              capture_output=True, text=True, check=False).stdout.strip()
    found = builds(calls)
    assert set(found) == set(IMAGES)
    for service, name in IMAGES.items():
        call = found[service]
        assert call[call.index("--platform") + 1] == "linux/arm64"
        assert call[call.index("-t") + 1] == f"pickme/lucid-{name}:latest-arm64"
        assert "--push" in call and call[-1] == "."  # the build context is the repository root
        if revision:
            assert f"REVISION={revision}" in call


def test_make_images_takes_prefix_and_tag_and_multiarch(tmp_path: Path) -> None:
    result, calls = make(ROOT, tmp_path, "images", "IMAGE_PREFIX=me/lucid-", "TAG=0.1.0-arm64")
    assert result.returncode == 0, result.stderr
    tags = {c[c.index("-t") + 1] for c in builds(calls).values()}
    assert tags == {f"me/lucid-{name}:0.1.0-arm64" for name in IMAGES.values()}
    result, calls = make(ROOT, tmp_path, "images-multiarch")
    assert result.returncode == 0, result.stderr
    for call in builds(calls).values():
        assert call[call.index("--platform") + 1] == "linux/amd64,linux/arm64"
        assert call[call.index("-t") + 1].endswith(":latest")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The Makefile and the three Dockerfiles in a scratch tree (pin-bases rewrites them)."""
    tree = tmp_path / "tree"
    (tree / "sessions").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", tree / "Makefile")
    for service in IMAGES:
        shutil.copy(ROOT / "sessions" / f"Dockerfile.{service}", tree / "sessions")
    return tree


def base_args(tree: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for service in IMAGES:
        text = (tree / "sessions" / f"Dockerfile.{service}").read_text()
        for name, value in re.findall(r"^ARG ([A-Z_]+_IMAGE)=(\S+)$", text, re.M):
            found.setdefault(name, set()).add(value)
    return found


def digest_of(ref: str, salt: str) -> str:
    return "sha256:" + hashlib.sha256((ref + salt).encode()).hexdigest()


def test_make_pin_bases_pins_both_bases_by_digest_and_repins(copy: Path, tmp_path: Path) -> None:
    assert base_args(copy) == {"BUILDER_IMAGE": {BASES[0]}, "RUNTIME_IMAGE": {BASES[1]}}
    for salt in ("first", "second"):  # a second run replaces the digest it wrote
        result, calls = make(copy, tmp_path, "pin-bases", digest=salt)
        assert result.returncode == 0, result.stderr
        assert [c[:4] for c in calls] == [["buildx", "imagetools", "inspect", b] for b in BASES]
        assert base_args(copy) == {"BUILDER_IMAGE": {f"{BASES[0]}@{digest_of(BASES[0], salt)}"},
                                   "RUNTIME_IMAGE": {f"{BASES[1]}@{digest_of(BASES[1], salt)}"}}


def test_make_pin_bases_leaves_the_dockerfiles_when_a_digest_cannot_be_had(
        copy: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_text() for p in (copy / "sessions").iterdir()}
    result, _ = make(copy, tmp_path, "pin-bases", digest="none")
    assert result.returncode != 0 and "pin-bases: cannot resolve python:3.13-slim-trixie" in (
        result.stdout + result.stderr)
    assert {p.name: p.read_text() for p in (copy / "sessions").iterdir()} == before
