"""Storage settings come from `LUCID_` variables and name each bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessions.common.secrets import ConfigError
from sessions.storage.config import DEFAULT_MAX_CHUNK_BYTES, load_settings


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LUCID_STORAGE_PORT", raising=False)
    monkeypatch.delenv("LUCID_MAX_CHUNK_BYTES", raising=False)
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.port == 8086
    assert settings.max_chunk_bytes == DEFAULT_MAX_CHUNK_BYTES == 16 * 1024 * 1024 + 4096
    assert settings.storage_dir == tmp_path / "storage"
    monkeypatch.setenv("LUCID_STORAGE_PORT", "9999")
    monkeypatch.setenv("LUCID_MAX_CHUNK_BYTES", "1048576")
    settings = load_settings()
    assert (settings.port, settings.max_chunk_bytes) == (9999, 1048576)


def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_STORAGE_PORT", "0")
    monkeypatch.setenv("LUCID_MAX_CHUNK_BYTES", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "LUCID_STORAGE_PORT" in str(info.value)
    assert "LUCID_MAX_CHUNK_BYTES" in str(info.value)


def test_production_needs_a_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_MODE", "production")
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LUCID_SERVICE_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigError):
        load_settings().service_token()
