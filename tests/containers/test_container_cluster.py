"""docker-compose.cluster.yml without an engine: `docker compose config` and its structure.

The cluster variant runs the three images against an external S3 endpoint and a MongoDB
replica set; neither image can be pulled here, so what is checked is the file as Compose
resolves it: it refuses to start without the object store named, keeps every secret in a
file, hardens every service as the Pi file does, and its settings exist in our code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from sessions.storage.config import parse_s3_url
from tests.containers.test_container_files import ROOT, SECRET_WORDS, compose_config, tool

pytestmark = pytest.mark.containers

CLUSTER = ROOT / "docker-compose.cluster.yml"
PI = ROOT / "docker-compose.pi.yml"
ENV = {"LUCID_CHUNK_STORE_URL": "s3://lucid-recordings/site-a",
       "LUCID_S3_ENDPOINT": "https://s3.example.org"}
URL_SETTINGS = {"LUCID_STORAGE_URL", "LUCID_PROCESSOR_URL", "LUCID_CHUNK_STORE_URL"}


@pytest.fixture
def cluster(tmp_path: Path) -> dict[str, Any]:
    return compose_config(tmp_path, CLUSTER, env=ENV)


def test_cluster_compose_needs_the_object_store_named(tmp_path: Path) -> None:
    for missing in ENV:
        env = {k: v for k, v in ENV.items() if k != missing}
        result = subprocess.run(  # noqa: S603 - the dev extra's compose
            [tool("docker-compose"), "--project-directory", str(tmp_path), "-f", str(CLUSTER),
             "config"], capture_output=True, text=True, check=False,
            env={"PATH": "/usr/bin:/bin", **env})
        assert result.returncode != 0 and missing in result.stderr, (missing, result.stderr)


def test_cluster_compose_runs_the_three_pi_images_and_no_database(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    pi = compose_config(tmp_path, PI)
    assert set(cluster["services"]) == {"storage", "processor", "api"}
    for name, svc in cluster["services"].items():
        assert svc["image"] == pi["services"][name]["image"], name
        assert list(svc["networks"]) == ["lucid-cluster-network"], name
    assert cluster["networks"]["lucid-cluster-network"]["name"] == "lucid-cluster-network"
    # `make secrets` names the signing key after the same default node name
    assert (cluster["services"]["processor"]["environment"]["LUCID_NODE_NAME"]
            == pi["services"]["processor"]["environment"]["LUCID_NODE_NAME"])
    published = [n for n, s in cluster["services"].items() if s.get("ports")]
    assert published == ["api"]
    assert [p["target"] for p in cluster["services"]["api"]["ports"]] == [8087]


def test_cluster_compose_points_storage_at_s3_and_mongodb(cluster: dict[str, Any]) -> None:
    env = cluster["services"]["storage"]["environment"]
    assert parse_s3_url(env["LUCID_CHUNK_STORE_URL"]) == ("lucid-recordings", "site-a")
    assert env["LUCID_S3_ENDPOINT"] == "https://s3.example.org"
    assert env["LUCID_S3_REGION"] == "us-east-1"
    assert env["LUCID_METADATA_URL_FILE"] == "/run/secrets/metadata_url"
    assert "LUCID_METADATA_URL" not in env  # the URL carries a password: a file only
    mounts = {s["source"] for s in cluster["services"]["storage"]["secrets"]}
    assert mounts == {"service_token", "metadata_url", "s3_access_key", "s3_secret_key"}
    # chunks in S3 and metadata in MongoDB: no volume, /data is a tmpfs of the service's user
    assert "volumes" not in cluster["services"]["storage"]
    assert any(t.startswith("/data:") and "uid=65532" in t
               for t in cluster["services"]["storage"]["tmpfs"])


def test_cluster_compose_hardening_and_limits(cluster: dict[str, Any]) -> None:
    for name, svc in cluster["services"].items():
        assert svc["read_only"] is True, name
        assert svc["user"] == "65532:65532", name
        assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc, name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert any(t.startswith("/tmp") for t in svc["tmpfs"]), name  # noqa: S108
        limits = svc["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) <= 2 and int(limits["memory"]) <= 768 << 20, name
    after = {n: sorted(s.get("depends_on", {})) for n, s in cluster["services"].items()}
    assert after == {"storage": [], "processor": ["storage"], "api": ["processor"]}


def test_cluster_compose_secrets_are_files_never_environment(cluster: dict[str, Any]) -> None:
    assert all("file" in s for s in cluster["secrets"].values())
    mounts = {name: {s["source"] for s in svc.get("secrets", [])}
              for name, svc in cluster["services"].items()}
    assert {n for n, got in mounts.items() if got & {"master_key", "signing_key"}} == {
        "processor"}
    assert {n for n, got in mounts.items() if got & {"s3_access_key", "s3_secret_key",
                                                    "metadata_url"}} == {"storage"}
    for name, svc in cluster["services"].items():
        for var, value in svc.get("environment", {}).items():
            if SECRET_WORDS.search(var):
                assert var in URL_SETTINGS, (name, var)
                assert "@" not in str(value), (name, var)
            if var.endswith("_FILE"):
                assert str(value).startswith("/run/secrets/"), (name, var)
                assert value.removeprefix("/run/secrets/") in mounts[name], (name, var)
    assert {n: [v["source"] for v in s.get("volumes", [])]
            for n, s in cluster["services"].items()} == {
        "storage": [], "processor": ["processor-keys"], "api": []}


def test_cluster_compose_settings_exist(cluster: dict[str, Any]) -> None:
    from sessions.api.config import Settings as ApiSettings
    from sessions.processor.config import Settings as ProcessorSettings
    from sessions.storage.config import Settings as StorageSettings

    known = {"api": ApiSettings, "processor": ProcessorSettings, "storage": StorageSettings}
    for name, settings in known.items():
        for var in cluster["services"][name]["environment"]:
            assert var.removeprefix("LUCID_").lower() in settings.model_fields, (name, var)


def test_cluster_compose_loads_storage_settings(cluster: dict[str, Any], tmp_path: Path) -> None:
    """Storage's own settings code accepts the file's environment, the secrets in place."""
    from sessions.storage.config import Settings

    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    values = {"service_token": "t" * 43, "metadata_url":
              "mongodb://lucid:pw@db1.example.org,db2.example.org/lucid?replicaSet=rs0"
              "&authSource=admin", "s3_access_key": "AKIAEXAMPLE", "s3_secret_key": "s" * 40}
    for name, value in values.items():
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    env = {k: str(v).replace("/run/secrets", str(secrets)).replace("/data", str(tmp_path))
           for k, v in cluster["services"]["storage"]["environment"].items()}
    fields = {k.removeprefix("LUCID_").lower(): v for k, v in env.items()}
    settings = Settings(**fields)
    assert settings.metadata().scheme == "mongodb"
    location = settings.chunk_store_location()
    assert location is not None
    assert (location.bucket, location.prefix) == ("lucid-recordings", "site-a")
    assert location.endpoint == "https://s3.example.org"
    assert location.secret_access_key == "s" * 40
    assert "s" * 40 not in repr(location) and "pw" not in location.redacted
