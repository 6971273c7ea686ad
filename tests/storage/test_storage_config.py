"""Storage settings come from `LUCID_` variables and name each bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessions.common.secrets import ConfigError
from sessions.storage.config import DEFAULT_MAX_CHUNK_BYTES, load_settings
from sessions.storage.dburl import parse


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


def test_the_orphan_sweep_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert (settings.orphan_grace_seconds, settings.orphan_sweep_seconds) == (3600.0, 600.0)
    monkeypatch.setenv("LUCID_ORPHAN_SWEEP_SECONDS", "0")  # start-up only
    assert load_settings().orphan_sweep_seconds == 0
    monkeypatch.setenv("LUCID_ORPHAN_GRACE_SECONDS", "5")  # commits would meet the sweep
    monkeypatch.setenv("LUCID_ORPHAN_SWEEP_SECONDS", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "LUCID_ORPHAN_GRACE_SECONDS" in str(info.value)
    assert "LUCID_ORPHAN_SWEEP_SECONDS" in str(info.value)


def test_production_needs_a_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_MODE", "production")
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LUCID_SERVICE_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigError):
        load_settings().service_token()


def test_metadata_url_defaults_to_sqlite_under_the_data_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    for name in ("URL", "URL_FILE", "PASSWORD_FILE"):
        monkeypatch.delenv(f"LUCID_METADATA_{name}", raising=False)
    url = load_settings().metadata()
    assert (url.scheme, url.path) == ("sqlite", tmp_path / "storage" / "metadata.sqlite3")
    monkeypatch.setenv("LUCID_METADATA_URL", "sqlite:///relative/m.sqlite3")
    assert load_settings().metadata().path == Path("relative/m.sqlite3")


@pytest.mark.parametrize(("url", "database"), [
    ("mongodb://db.internal:27017/lucid", "lucid"),
    ("mongodb://a:27017,b:27017,c:27017/lucid_prod?replicaSet=rs0&tls=true", "lucid_prod"),
    ("mongodb+srv://cluster0.example.net/lucid?retryWrites=true", "lucid"),
])
def test_mongodb_urls_name_their_database(url: str, database: str) -> None:
    parsed = parse(url)
    assert parsed.database == database and parsed.url == url
    assert parsed.scheme == url.split("://")[0]


@pytest.mark.parametrize("url", [
    "postgres://x/y", "mongodb://host", "mongodb://host/", "mongodb://host/a.b",
    "sqlite://relative", "sqlite:///", "mongodb:///lucid",
])
def test_bad_metadata_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        parse(url)


def test_credentials_come_from_files_and_never_show(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    secret = "s3cr3t-" + "p" * 20
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    url_file = tmp_path / "url"
    url_file.write_text(f"mongodb://lucid:{secret}@db:27017/lucid?replicaSet=rs0\n")
    monkeypatch.setenv("LUCID_METADATA_URL_FILE", str(url_file))
    url = load_settings().metadata()
    assert secret in url.url
    assert secret not in url.redacted and secret not in str(url) and secret not in repr(url)
    assert url.redacted == "mongodb://***@db:27017/lucid?replicaSet=rs0"
    monkeypatch.delenv("LUCID_METADATA_URL_FILE")
    password_file = tmp_path / "password"
    password_file.write_text("p@ss/w:rd\n")
    monkeypatch.setenv("LUCID_METADATA_URL", "mongodb://lucid@db:27017/lucid")
    monkeypatch.setenv("LUCID_METADATA_PASSWORD_FILE", str(password_file))
    url = load_settings().metadata()
    assert url.url == "mongodb://lucid:p%40ss%2Fw%3Ard@db:27017/lucid"
    assert "ss" not in url.redacted.split("@")[0]
    monkeypatch.setenv("LUCID_METADATA_URL", f"mongodb://lucid:{secret}@db/lucid")
    monkeypatch.delenv("LUCID_METADATA_PASSWORD_FILE")
    with pytest.raises(ConfigError) as info:
        load_settings().metadata()
    assert secret not in str(info.value)


def test_a_tls_url_keeps_its_options_and_hides_a_key_passphrase(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = "/run/secrets/mongo-ca.pem"
    url = parse(f"mongodb://db:27017/lucid?replicaSet=rs0&tls=true&tlsCAFile={ca}")
    assert url.url.endswith(f"tlsCAFile={ca}") and url.redacted == url.url
    phrase = "k3y-" + "q" * 20
    keyed = parse(f"mongodb://db/lucid?tls=true&tlsCertificateKeyFile=/k.pem"
                  f"&tlsCertificateKeyFilePassword={phrase}&w=majority")
    assert phrase in keyed.url and phrase not in keyed.redacted
    assert keyed.redacted.endswith("tlsCertificateKeyFilePassword=***&w=majority")
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LUCID_METADATA_URL", keyed.url)
    with pytest.raises(ConfigError, match="must not hold a password") as info:
        load_settings().metadata()
    assert phrase not in str(info.value)
