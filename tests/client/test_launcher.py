"""The launcher's wiring, without starting anything: settings by name, environments, URLs."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.client import launcher
from sessions.client.launcher import SERVICES, SETTINGS, Node, ServiceFailed


def test_settings_are_found_by_name_for_every_service(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    assert tuple(SETTINGS) == SERVICES
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    for n, name in enumerate(SERVICES):
        monkeypatch.setenv(f"LUCID_{name.upper()}_PORT", str(9100 + n))
    for n, name in enumerate(SERVICES):
        settings = SETTINGS[name]()
        assert settings.port == 9100 + n and settings.data_dir == tmp_path


def test_the_environment_is_layered_and_drops_the_callers_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_METADATA_URL", "mongodb://elsewhere/db")
    node = Node(tmp_path, {"storage": 1001, "processor": 1002, "api": 1003},
                base_env={"LUCID_CHUNK_SIZE": "1", "LUCID_NODE_NAME": "base"},
                extra_env={"*": {"LUCID_CHUNK_SIZE": "2"}, "api": {"LUCID_CHUNK_SIZE": "3"}})
    api, storage = node.env_of("api"), node.env_of("storage")
    assert (api["LUCID_CHUNK_SIZE"], storage["LUCID_CHUNK_SIZE"]) == ("3", "2")
    assert api["LUCID_NODE_NAME"] == "base"
    assert "LUCID_METADATA_URL" not in storage  # a test sees only what it set
    assert storage["LUCID_PROCESSOR_URL"] == "http://127.0.0.1:1002"
    assert storage["LUCID_STORAGE_PORT"] == "1001" and storage["LUCID_DATA_DIR"] == str(tmp_path)
    kept = Node(tmp_path, node.ports, inherit_lucid=True)  # `up`: the user's configuration
    assert kept.env_of("storage")["LUCID_METADATA_URL"] == "mongodb://elsewhere/db"


def test_urls_follow_the_bind_address_and_tls(tmp_path: Path) -> None:
    ports = launcher.free_ports()
    assert set(ports) == set(SERVICES) and len(set(ports.values())) == 3
    node = Node(tmp_path, ports, host="0.0.0.0", tls={"api": ssl.create_default_context()})  # noqa: S104
    assert node.url("api") == f"https://127.0.0.1:{ports['api']}"
    assert node.urls["storage"] == f"http://127.0.0.1:{ports['storage']}"
    assert node.env_of("api")["LUCID_HOST"] == "0.0.0.0"  # noqa: S104


def test_a_service_that_exits_while_starting_fails_with_its_log(tmp_path: Path) -> None:
    node = Node.in_dir(tmp_path)
    (tmp_path / "logs" / "storage.log").write_text("boom: the reason\n")
    node.procs["storage"] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])  # noqa: S603
    with pytest.raises(ServiceFailed, match=r"storage exited with status 3(.|\n)*boom"):
        node.wait_ok("storage", "/health", timeout=30)
    node.stop()
    assert node.procs == {}
