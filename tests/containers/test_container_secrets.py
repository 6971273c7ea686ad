"""`make secrets` (containers/init_secrets.py) and the gateway's HTTPS, without an engine."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from sessions.api.config import Settings
from sessions.client import launcher
from sessions.common.secrets import ConfigError
from sessions.core import MasterKey, NoteSigner

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "containers" / "init_secrets.py"
FILES = {"master.key", "signing.key", "service.token", "admin.token", "tls-cert.pem",
         "tls-key.pem", "mongo-password", "mongo-keyfile", "metadata-url"}

pytestmark = pytest.mark.containers


def init(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INIT), str(directory), *args],  # noqa: S603
                          capture_output=True, text=True, check=True, cwd=ROOT)


def test_init_secrets_creates_every_compose_secret_once(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    init(target, "--node-name", "pi-test", "--hostname", "pi.example")
    assert {p.name for p in target.iterdir()} == FILES
    assert target.stat().st_mode & 0o777 == 0o700
    for path in target.iterdir():
        mode = path.stat().st_mode & 0o777
        assert mode == (0o400 if os.geteuid() == 0 else 0o444), path.name
    MasterKey.from_file(target / "master.key")
    assert NoteSigner.from_key_text((target / "signing.key").read_text().strip()).name == "pi-test"
    password = (target / "mongo-password").read_text().strip()
    assert (target / "metadata-url").read_text().strip() == (
        f"mongodb://lucid:{password}@mongo:27017/lucid?replicaSet=rs0&authSource=admin")
    cert = x509.load_pem_x509_certificate((target / "tls-cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "pi.example" in names.get_values_for_type(x509.DNSName)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    again = init(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert "created" not in again.stdout


def test_init_secrets_never_makes_a_second_mongo_password(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    init(target)
    (target / "metadata-url").unlink()
    result = subprocess.run([sys.executable, str(INIT), str(target)],  # noqa: S603
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 1 and "metadata-url is missing" in result.stderr
    assert not (target / "metadata-url").exists()


def test_tls_settings_need_both_files(tmp_path: Path) -> None:
    assert Settings().tls_files() == (None, None)
    with pytest.raises(ConfigError, match="both"):
        Settings(tls_cert_file=tmp_path / "c.pem").tls_files()
    with pytest.raises(ConfigError, match="TLS certificate"):
        Settings(tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem").tls_files()


def test_gateway_serves_https_that_the_cli_ca_file_verifies(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    init(target)
    trusted = ssl.create_default_context(cafile=target / "tls-cert.pem")
    node = launcher.Node(tmp_path / "data", launcher.free_ports(), tmp_path,
                         tls={"api": trusted}, extra_env={"api": {
                             "LUCID_TLS_CERT_FILE": str(target / "tls-cert.pem"),
                             "LUCID_TLS_KEY_FILE": str(target / "tls-key.pem")}})
    try:
        node.start("api")  # /health answers without the other two
        url = node.url("api") + "/health"
        assert url.startswith("https://")
        assert httpx.get(url, verify=trusted, trust_env=False).json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, verify=ssl.create_default_context(), trust_env=False)
    finally:
        node.stop()
