"""Settings of the public gateway, the only service with a public port."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from sessions.common.secrets import check_token, load_or_create, new_token
from sessions.common.settings import CommonSettings, load, service_url

log = logging.getLogger("lucid.config")

KIB = 1024
GIB = 1024 * 1024 * 1024
TIB = 1024 * GIB


class Settings(CommonSettings):
    """Gateway settings: `LUCID_` prefix; the admin token only through `LUCID_ADMIN_TOKEN_FILE`."""

    model_config = SettingsConfigDict(env_prefix="LUCID_", extra="ignore", frozen=True)

    api_port: int = Field(8087, ge=1, le=65535)
    processor_url: str = Field("http://127.0.0.1:8085", pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    processor_uds: Path | None = Field(None, description="Unix socket the processor also "
                                       "listens on, and the gateway reaches it on instead of "
                                       "TCP (plain http); unset: TCP only")
    admin_token_file: Path | None = Field(None, description="file holding the clients' bearer "
                                          "token (local default <data_dir>/secrets/admin.token)")
    max_upload_bytes: int = Field(8 * GIB, ge=1, description="largest body of one PATCH upload")
    max_json_bytes: int = Field(64 * KIB, ge=1024, description="largest JSON request body")
    max_session_bytes: int = Field(TIB, ge=1, le=2**53 - 1, description="largest session, "
                                   "for tus (Tus-Max-Size) and the JSON API's PATCH alike")
    idle_deadline: int = Field(86400, ge=0, description="seconds a recording may stay idle "
                               "before it is closed (tus Upload-Expires); 0: never")
    token_cache_seconds: float = Field(10.0, ge=0, le=3600, description="seconds a token "
                                       "lookup is cached: the longest a token revoked through "
                                       "another gateway keeps working here; 0: no cache")
    rate_limit: float = Field(200.0, ge=0, description="requests per second per token, on "
                              "average (per gateway process); 0: no limit")
    rate_burst: int = Field(2000, ge=1, description="requests a token may send at once")
    body_read_timeout: float = Field(60.0, ge=1, le=3600, description="seconds an upload "
                                     "body may send nothing before the request fails with 408 "
                                     "request_timeout and frees the session's writer slot")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS "
                              "(e.g. https://rec.example.com); empty: CORS off")

    @field_validator("processor_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return service_url(v)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        for origin in filter(None, (o.strip() for o in v.split(","))):
            if origin != "*" and not re.fullmatch(r"https?://[^\s/,]+", origin):
                raise ValueError(f"{origin[:80]!r} is not an origin (scheme://host[:port])")
        return v

    @property
    def allowed_origins(self) -> list[str]:
        """Return the CORS origins, none when CORS is off."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def port(self) -> int:
        return self.api_port

    @property
    def upstream_url(self) -> str:
        return self.processor_url

    @property
    def upstream_uds(self) -> Path | None:
        return self.processor_uds

    def preflight(self) -> None:
        """Read the service token and the admin token now (ConfigError if unusable)."""
        super().preflight()
        self.admin_token()

    def admin_token(self) -> str:
        """Return the clients' bearer token, generating it in local mode if missing."""
        text = load_or_create(self.admin_token_file, default=self.secrets_dir / "admin.token",
                              production=self.production, what="admin token",
                              env="LUCID_ADMIN_TOKEN_FILE", generate=new_token,
                              announce=log.warning)
        return check_token(text, what="admin token")


def load_settings() -> Settings:
    """Return validated gateway settings from the environment (ConfigError if invalid)."""
    return load(Settings)
