"""The CLI trusts the gateway's HTTPS certificate by a CA file or a public-key pin, as curl does.

Real processes on loopback: storage and processor, and the gateway serving HTTPS with the
self-signed certificate of `make secrets` (containers/init_secrets.py), as in
docker-compose.pi.yml.  The same pin is checked by curl's --pinnedpubkey, so the CLI's pin
format is curl's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sessions.client import launcher
from sessions.client.launcher import REPO

INIT = REPO / "containers" / "init_secrets.py"
CURL = shutil.which("curl")


@dataclass
class Gateway:
    url: str
    secrets: Path
    token: Path
    other_ca: Path  # a certificate of another `make secrets`: not the gateway's

    @property
    def cert(self) -> Path:
        return self.secrets / "tls-cert.pem"

    def pin(self, cert: Path | None = None) -> bytes:
        key = x509.load_pem_x509_certificate((cert or self.cert).read_bytes()).public_key()
        spki = key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).digest()

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `lucid-sessions ARGS` with no CA of its own choosing (no SSL_CERT_FILE)."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("LUCID_") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        return subprocess.run(  # noqa: S603 - our interpreter and module
            [sys.executable, "-m", "sessions.client", *args],
            env={**base, "LUCID_URL": self.url, "LUCID_TOKEN_FILE": str(self.token),
                 "NO_PROXY": "127.0.0.1", **env},
            capture_output=True, text=True, timeout=60, check=False)


def _init_secrets(directory: Path) -> None:
    subprocess.run([sys.executable, str(INIT), str(directory)],  # noqa: S603
                   capture_output=True, check=True, cwd=REPO)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Storage, processor and an HTTPS gateway on loopback with `make secrets`' certificate."""
    root = tmp_path_factory.mktemp("tls")
    secrets_dir, other = root / "secrets", root / "other"
    _init_secrets(secrets_dir)
    _init_secrets(other)
    trusted = ssl.create_default_context(cafile=secrets_dir / "tls-cert.pem")
    node = launcher.Node(root / "data", launcher.free_ports(), root, tls={"api": trusted},
                         extra_env={"api": {
                             "LUCID_TLS_CERT_FILE": str(secrets_dir / "tls-cert.pem"),
                             "LUCID_TLS_KEY_FILE": str(secrets_dir / "tls-key.pem")}})
    node.data_dir.mkdir()
    with node.running():
        assert node.url("api").startswith("https://")
        yield Gateway(node.url("api"), secrets_dir, node.data_dir / "secrets" / "admin.token",
                      other / "tls-cert.pem")


def test_cli_trusts_the_gateway_by_ca_file(gateway: Gateway) -> None:
    assert gateway.cli("ls", "--cacert", str(gateway.cert)).returncode == 0
    assert gateway.cli("ls", LUCID_CACERT=str(gateway.cert)).returncode == 0


def test_cli_refuses_a_certificate_no_given_ca_vouches_for(gateway: Gateway) -> None:
    for args, env in ((["ls"], {}), (["ls", "--cacert", str(gateway.other_ca)], {}),
                      (["ls"], {"LUCID_CACERT": str(gateway.other_ca)})):
        result = gateway.cli(*args, **env)
        assert result.returncode == 1, (args, env, result.stderr)
        assert "error: tls_untrusted:" in result.stderr, result.stderr
        assert "certificate verification failed" in result.stderr


def test_cli_trusts_the_gateway_by_public_key_pin(gateway: Gateway) -> None:
    pin = gateway.pin()
    curl_form = "sha256//" + base64.b64encode(pin).decode()
    assert gateway.cli("ls", "--pin-sha256", curl_form).returncode == 0
    hex_form = ":".join(f"{b:02X}" for b in pin)
    assert gateway.cli("ls", LUCID_PIN_SHA256=hex_form).returncode == 0
    # the pin and a CA file together: both must hold
    both = gateway.cli("ls", "--pin-sha256", curl_form, "--cacert", str(gateway.other_ca))
    assert both.returncode == 1 and "tls_untrusted" in both.stderr


def test_cli_refuses_a_certificate_with_another_key(gateway: Gateway) -> None:
    wrong = "sha256//" + base64.b64encode(gateway.pin(gateway.other_ca)).decode()
    result = gateway.cli("ls", "--pin-sha256", wrong)
    assert result.returncode == 1
    assert "error: tls_untrusted:" in result.stderr and "pinned public key" in result.stderr


def test_cli_rejects_a_malformed_pin(gateway: Gateway) -> None:
    for bad in ("sha256//nope", "abc", "00" * 31):
        result = gateway.cli("ls", "--pin-sha256", bad)
        assert result.returncode == 2 and "SHA-256 of the certificate's public key" in result.stderr


@pytest.mark.skipif(CURL is None, reason="CURL NOT FOUND: curl's side of the TLS trust not run")
def test_curl_trusts_the_same_ca_file_and_pin(gateway: Gateway) -> None:
    assert CURL is not None
    health = gateway.url + "/health"
    ok = subprocess.run([CURL, "-sS", "--fail", "--noproxy", "*", "--cacert", str(gateway.cert),  # noqa: S603
                         health], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and '"status":"ok"' in ok.stdout.replace(" ", ""), ok.stderr
    pin = "sha256//" + base64.b64encode(gateway.pin()).decode()
    pinned = subprocess.run([CURL, "-sS", "--fail", "--noproxy", "*", "-k",  # noqa: S603
                             "--pinnedpubkey", pin, health],
                            capture_output=True, text=True, check=False)
    assert pinned.returncode == 0, pinned.stderr
    wrong = "sha256//" + base64.b64encode(gateway.pin(gateway.other_ca)).decode()
    refused = subprocess.run([CURL, "-sS", "--fail", "--noproxy", "*", "-k",  # noqa: S603
                              "--pinnedpubkey", wrong, health],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 90  # CURLE_SSL_PINNEDPUBKEYNOTMATCH
    plain = subprocess.run([CURL, "-sS", "--fail", "--noproxy", "*", health],  # noqa: S603
                           capture_output=True, text=True, check=False)
    assert plain.returncode == 60  # no CA vouches for a self-signed certificate
