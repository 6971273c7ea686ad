"""Settings of the chunk processor, the only service that holds keys."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from sessions.common.settings import CommonSettings, load, service_url
from sessions.core import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ZSTD_LEVEL,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
)


def _default_node_name() -> str:
    host = "".join(c for c in socket.gethostname().lower() if c.isalnum() or c in "-.")
    return f"lucid-{host or 'node'}"


class Settings(CommonSettings):
    """Processor settings: `LUCID_` prefix; key material only through `*_FILE` paths."""

    model_config = SettingsConfigDict(env_prefix="LUCID_", extra="ignore", frozen=True)

    processor_port: int = Field(8085, ge=1, le=65535)
    storage_url: str = Field("http://127.0.0.1:8086", pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    processor_uds: Path | None = Field(None, description="Unix socket the processor also "
                                       "listens on, and the gateway reaches it on instead of "
                                       "TCP (plain http); unset: TCP only")
    storage_uds: Path | None = Field(None, description="Unix socket storage also listens "
                                     "on, and the processor reaches it on instead of TCP "
                                     "(plain http); unset: TCP only")
    master_key_file: Path | None = Field(None, description="file with the 256-bit master key "
                                        "(64 hex characters)")
    previous_master_key_files: str | None = Field(
        None, description="comma-separated files with retired master keys, kept only to "
        "unwrap (and rotate) session keys wrapped before the current master key")
    signing_key_file: Path | None = Field(None, description="file with the node's Ed25519 "
                                         "signing key (C2SP PRIVATE+KEY text)")
    signing_key_history_file: Path | None = Field(
        None, description="file recording every signing key the node used, with its validity "
        "period (public data; default <data_dir>/processor/signing-keys.json)")
    node_name: str = Field(default_factory=_default_node_name,
                           pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                           description="names the node in checkpoint origins and key names")
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE,
                            description="plaintext bytes per chunk (chosen by `make bench`)")
    zstd_level: int = Field(DEFAULT_ZSTD_LEVEL, ge=1, le=19)
    inflight_chunks: int = Field(2, ge=1, le=16, description="sealed chunks being stored at once "
                                 "while the next one is sealed")
    seal_workers: int = Field(1, ge=1, le=16, description="chunks sealed (or opened) at once, "
                              "each on its own thread with its own zstd context (peak RSS: "
                              "README, Memory); more help only where cores are idle")
    memory_budget_mb: int = Field(
        48, ge=8, le=1 << 20, description="MiB of chunk buffers the processor holds at most, "
        "shared by all uploads, replays and verifies at once; beyond it they wait their turn "
        "(sized for a Pi 5: with the service's own ~73 MB it stays under 150 MB)")
    prefetch_chunks: int = Field(3, ge=0, le=16, description="chunks fetched ahead on replay")
    scrub_interval: float = Field(3600.0, ge=0, le=30 * 86400, description="seconds between "
                                  "background scrub passes (a sampled verify of stored "
                                  "sessions); 0 turns the scrub off")
    scrub_sessions_per_pass: int = Field(20, ge=1, le=10_000,
                                         description="sessions verified per scrub pass")
    scrub_sample_percent: float = Field(10.0, gt=0, le=100,
                                        description="percent of each session's chunks a "
                                        "scrub pass reads (all leaf rows are always checked)")
    scrub_max_bytes_per_second: int = Field(
        16 << 20, ge=0, description="average sealed bytes per second a scrub pass reads at "
        "most (0: no limit)")

    retention_days: int | None = Field(None, ge=1, le=36500, description="retention of a "
                                       "session created without one; unset: kept until deleted")
    kek_dir: Path | None = Field(None, description="directory of the retention periods' "
                                 "key-encryption keys (default <data_dir>/secrets/kek); keep it "
                                 "out of backups")
    idle_deadline: int = Field(86400, ge=0, le=365 * 86400, description="seconds a recording "
                               "session may go without a commit before the sweep finalizes it "
                               "over its committed chunks; 0: never")
    sweep_interval: float = Field(300.0, ge=0, le=86400, description="seconds between "
                                  "retention sweep passes; 0 turns the sweep off")
    sweep_batch: int = Field(100, ge=1, le=1000, description="most sessions a sweep pass "
                             "erases, and most it finalizes")
    clock_jump_tolerance: float = Field(120.0, ge=1, le=86400, description="seconds the wall "
                                        "clock may drift from the monotonic clock between two "
                                        "sweep passes before the sweep stops acting")
    clock_settle: float = Field(3600.0, ge=0, le=30 * 86400, description="seconds the wall "
                                "clock must run steadily after a jump before the sweep acts "
                                "again")
    lease_seconds: float = Field(30.0, ge=1, le=3600, description="seconds a session's writer "
                                 "lease lasts without renewal (renewed every third of it "
                                 "while an upload runs); after a processor stalls or dies, "
                                 "another may take the session over once it lapses")
    body_read_timeout: float = Field(60.0, ge=1, le=3600, description="seconds an upload body "
                                     "may send nothing before the request fails (408) and "
                                     "frees the session's writer slot")

    @field_validator("storage_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return service_url(v)

    @property
    def port(self) -> int:
        return self.processor_port

    @property
    def lease_holder_dir(self) -> Path:
        """Return where this data dir's writer-lease holder ids live (`lease.holder_identity`)."""
        return self.data_dir / "processor" / "lease-holders"

    @property
    def upstream_url(self) -> str:
        return self.storage_url

    @property
    def listen_uds(self) -> Path | None:
        return self.processor_uds

    @property
    def upstream_uds(self) -> Path | None:
        return self.storage_uds


def load_settings() -> Settings:
    """Return validated processor settings from the environment (ConfigError if invalid)."""
    return load(Settings)
