"""Settings shared by all three services: one `LUCID_` prefix, secrets only via `*_FILE`.

Each service subclasses `CommonSettings` in its own `config.py`.  Validation
happens at start-up; `load(cls)` turns pydantic's errors into one `ConfigError`
whose message names every bad variable, without echoing secret values.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sessions.common.secrets import ConfigError, check_token, load_or_create, new_token

log = logging.getLogger("lucid.config")

S = TypeVar("S", bound="CommonSettings")


class Mode(StrEnum):
    LOCAL = "local"
    PRODUCTION = "production"


class Transport(StrEnum):
    """Which HTTP client transport carries the calls between services."""

    WIRE = "wire"  # sessions/common/_wire.py: the default (README, "Service transport decision")
    HTTPX = "httpx"  # httpx's own transport (httpcore and h11): the fallback


def plain_http_url(url: str) -> str:
    """Return a service URL without its trailing slash; refuse https (no TLS between services)."""
    if url.lower().startswith("https://"):
        raise ValueError("https is not supported between services yet: use http:// to a "
                         "service on this host or a private network")
    return url.rstrip("/")


class CommonSettings(BaseSettings):
    """Settings every service reads."""

    model_config = SettingsConfigDict(env_prefix="LUCID_", extra="ignore", frozen=True)

    mode: Mode = Field(Mode.LOCAL, description="local generates missing secrets; production "
                       "refuses to start without them")
    data_dir: Path = Field(Path("lucid-data"), description="the only directory the service "
                           "writes to")
    host: str = Field("127.0.0.1", description="address to bind")
    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug)$")
    service_token_file: Path | None = Field(None, description="file holding the internal "
                                            "service token")
    http_transport: Transport = Field(Transport.WIRE, description="client transport for calls "
                                      "to the other services: wire, or httpx (the fallback)")

    @property
    def production(self) -> bool:
        return self.mode is Mode.PRODUCTION

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def port(self) -> int:
        """Return the port this service listens on (each service names its own setting)."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Read every secret the service needs, so a missing one stops it before it serves."""
        self.service_token()

    def tls_files(self) -> tuple[Path | None, Path | None]:
        """Return the (certificate, key) files to serve HTTPS with; (None, None): plain HTTP."""
        return None, None

    def service_token(self) -> str:
        """Return the internal service token, generating it in local mode if missing."""
        text = load_or_create(self.service_token_file, default=self.secrets_dir / "service.token",
                              production=self.production, what="service token",
                              env="LUCID_SERVICE_TOKEN_FILE", generate=new_token,
                              announce=log.warning)
        return check_token(text, what="service token")


def load(cls: type[S]) -> S:
    """Build settings from the environment; raise ConfigError naming each bad variable."""
    try:
        return cls()  # type: ignore[call-arg]  # pydantic-settings fills fields from the env
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            name = prefix + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
