"""A service refuses a bad configuration with exit 2 and a message, no traceback.

Through both of its entry points: `python -m sessions.<service>` (the images') and
`lucid-sessions serve <service>`; both run `sessions.common.serve.serve`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = {"module": lambda service: ["-m", f"sessions.{service}"],
           "cli": lambda service: ["-m", "sessions.client", "serve", service]}


@pytest.fixture(params=ENTRIES)
def entry(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def run(entry: str, service: str, tmp_path: Path, **env: str
        ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    clean |= {"LUCID_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, *ENTRIES[entry](service)],  # noqa: S603
                          env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)


def serve(service: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run("cli", service, tmp_path, **env)


@pytest.mark.parametrize(("service", "env", "needle"), [
    ("api", {"LUCID_API_PORT": "notanumber"}, "LUCID_API_PORT"),
    ("api", {"LUCID_API_PORT": "70000"}, "LUCID_API_PORT"),
    ("api", {"LUCID_PROCESSOR_URL": "not a url"}, "LUCID_PROCESSOR_URL"),
    ("api", {"LUCID_MAX_UPLOAD_BYTES": "0"}, "LUCID_MAX_UPLOAD_BYTES"),
    ("api", {"LUCID_MODE": "production"}, "LUCID_SERVICE_TOKEN_FILE"),
    ("api", {"LUCID_MODE": "sideways"}, "LUCID_MODE"),
    ("processor", {"LUCID_MODE": "production"}, "LUCID_SERVICE_TOKEN_FILE"),
    ("storage", {"LUCID_MODE": "production"}, "LUCID_SERVICE_TOKEN_FILE"),
])
def test_invalid_configuration_exits_2_without_traceback(tmp_path: Path, service: str,
                                                         env: dict[str, str], needle: str,
                                                         entry: str) -> None:
    result = run(entry, service, tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert result.stderr.startswith(f"error: {service}: ")
    assert "Traceback" not in result.stderr + result.stdout


def test_production_needs_the_admin_token_file(tmp_path: Path, entry: str) -> None:
    token = tmp_path / "service.token"
    token.write_text("s" * 43 + "\n")
    result = run(entry, "api", tmp_path, LUCID_MODE="production",
                 LUCID_SERVICE_TOKEN_FILE=str(token))
    assert result.returncode == 2
    assert "LUCID_ADMIN_TOKEN_FILE" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s" * 43 not in result.stderr


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    result = serve("api", tmp_path, LUCID_MODE="production",
                   LUCID_SERVICE_TOKEN_FILE=str(tmp_path / "nope.token"))
    assert result.returncode == 2
    assert "nope.token" in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_placeholder_token_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "service.token"
    token.write_text("changeme\n")
    result = serve("api", tmp_path, LUCID_SERVICE_TOKEN_FILE=str(token))
    assert result.returncode == 2
    assert "placeholder" in result.stderr
    assert "changeme" not in result.stderr


@pytest.mark.parametrize("service", ["api", "processor", "storage"])
def test_a_bad_metadata_url_or_key_is_named_through_the_module_entry(tmp_path: Path,
                                                                     service: str) -> None:
    env, needle = {"api": ({"LUCID_TLS_CERT_FILE": str(tmp_path / "cert.pem")},
                           "LUCID_TLS_KEY_FILE"),
                   "processor": ({"LUCID_MASTER_KEY_FILE": str(tmp_path / "nope.key")},
                                 "nope.key"),
                   "storage": ({"LUCID_METADATA_URL": "postgres://db/lucid"},
                               "LUCID_METADATA_URL")}[service]
    result = run("module", service, tmp_path, **env)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the local secrets' announcements
    assert last.startswith(f"error: {service}: ") and needle in last, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_knows_every_service_through_a_plain_mapping() -> None:
    from sessions.client.cli import SERVE, build_parser
    from sessions.client.launcher import SERVICES

    assert set(SERVE) == set(SERVICES)
    assert build_parser().parse_args(["serve", "storage"]).service == "storage"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "client"])


def test_the_module_entry_serves_until_stopped(tmp_path: Path) -> None:
    """`python -m sessions.storage` (the image's ENTRYPOINT) serves, and stops on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    clean |= {"LUCID_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT),
              "LUCID_STORAGE_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "sessions.storage"], env=clean,  # noqa: S603
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "storage did not answer within 60 s"
                time.sleep(0.2)
        assert health.json() == {"status": "ok", "service": "storage"}
        refused = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5, trust_env=False)
        assert refused.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "Traceback" not in output
