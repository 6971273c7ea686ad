"""`lucid-sessions serve` refuses a bad configuration with exit 2 and a message, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def serve(service: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    clean |= {"LUCID_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "sessions.client", "serve", service],  # noqa: S603
                          env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)


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
                                                         env: dict[str, str], needle: str) -> None:
    result = serve(service, tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert result.stderr.startswith(f"error: {service}: ")
    assert "Traceback" not in result.stderr + result.stdout


def test_production_needs_the_admin_token_file(tmp_path: Path) -> None:
    token = tmp_path / "service.token"
    token.write_text("s" * 43 + "\n")
    result = serve("api", tmp_path, LUCID_MODE="production", LUCID_SERVICE_TOKEN_FILE=str(token))
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
