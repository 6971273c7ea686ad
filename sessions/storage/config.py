"""Storage settings: the common `LUCID_` settings plus the port and the chunk size cap."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from sessions.common.settings import CommonSettings, load

DEFAULT_MAX_CHUNK_BYTES = 16 * 1024 * 1024 + 4096


class Settings(CommonSettings):
    """Settings of the storage service (`LUCID_STORAGE_PORT`, `LUCID_MAX_CHUNK_BYTES`, ...)."""

    storage_port: int = Field(8086, ge=1, le=65535, description="port to listen on")
    max_chunk_bytes: int = Field(DEFAULT_MAX_CHUNK_BYTES, ge=1, le=1 << 30,
                                 description="largest sealed chunk accepted, in bytes")

    @property
    def port(self) -> int:
        return self.storage_port

    @property
    def storage_dir(self) -> Path:
        """Return the directory holding chunk files and the metadata database."""
        return self.data_dir / "storage"


def load_settings() -> Settings:
    """Return storage settings from the environment; raise ConfigError naming bad variables."""
    return load(Settings)
