"""The launcher's wiring: settings by name, environments, URLs, Unix sockets (one test starts
storage to see its socket kept across a restart)."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.client import launcher
from sessions.client.launcher import SERVICES, SETTINGS, Node, ServiceFailed
from tests.common.test_unix_sockets import short_dir  # noqa: F401 - a fixture


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


def test_a_node_beside_another_reaches_its_services_on_their_sockets(
        short_dir: Path) -> None:  # noqa: F811 - the fixture
    a = Node(short_dir / "a", {"storage": 1001, "processor": 1002, "api": 1003})
    b = a.beside(["processor"], data_dir=short_dir / "b")
    assert b.ports["storage"] == 1001 and b.ports["processor"] not in (1001, 1002, 1003)
    assert b.url("storage") == a.url("storage")
    assert b.sockets == {"storage": short_dir / "a" / "run" / "storage-1001.sock",
                         "processor": short_dir / "b" / "run"
                         / f"processor-{b.ports['processor']}.sock"}
    assert b.env_of("processor")["LUCID_STORAGE_UDS"] == str(a.sockets["storage"])
    assert b.env_of("api")["LUCID_PROCESSOR_UDS"] == str(b.sockets["processor"])
    with pytest.raises(ValueError, match="another node's"):
        b.start("storage")
    a.base_env["LUCID_TLS_CA_FILE"] = "/ca.pem"  # too late: `beside` fixed a's sockets
    assert set(a.sockets) == {"processor", "storage"}


def test_sockets_are_fixed_at_the_first_start_and_a_hop_with_a_url_keeps_tcp(
        short_dir: Path) -> None:  # noqa: F811 - the fixture
    """Storage restarted while the processor's settings name a storage URL (a proxy) comes
    back on the same socket; only the processor leaves it, for TCP to that URL."""
    node = Node.in_dir(short_dir / "n", base_env={"LUCID_LOG_LEVEL": "warning"})
    socket_path = node.data_dir / "run" / f"storage-{node.ports['storage']}.sock"
    try:
        node.start("storage")
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        node.extra_env["processor"] = {"LUCID_STORAGE_URL": "http://127.0.0.1:9"}
        node.extra_env["storage"] = {"LUCID_TLS_CA_FILE": "/ca.pem"}  # ignored from now on
        assert node.sockets["storage"] == socket_path
        assert "LUCID_STORAGE_UDS" not in node.env_of("processor")
        assert node.env_of("storage")["LUCID_STORAGE_UDS"] == str(socket_path)
        del node.extra_env["storage"]
        node.kill("storage")
        node.start("storage")
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(socket_path))  # the new process accepts there
    finally:
        node.stop()
    assert not socket_path.exists()
