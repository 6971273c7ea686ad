"""Settings shared by all three services: one `LUCID_` prefix, secrets only via `*_FILE`.

Each service subclasses `CommonSettings` in its own `config.py`.  Validation
happens at start-up; `load(cls)` turns pydantic's errors into one `ConfigError`
whose message names every bad variable, without echoing secret values.
"""

from __future__ import annotations

import logging
import os
import ssl
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sessions.common.secrets import ConfigError, check_token, load_or_create, new_token
from sessions.common.serve import MAX_SOCKET_PATH
from sessions.common.tls import client_context, server_files

log = logging.getLogger("lucid.config")

S = TypeVar("S", bound="CommonSettings")


class Mode(StrEnum):
    LOCAL = "local"
    PRODUCTION = "production"


class Transport(StrEnum):
    """Which HTTP client transport carries the calls between services."""

    WIRE = "wire"  # sessions/common/_wire.py: the default (README, "Service transport decision")
    HTTPX = "httpx"  # httpx's own transport (httpcore and h11): the fallback


def service_url(url: str) -> str:
    """Return a service URL (http:// or https://) without its trailing slash."""
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
    # TLS (sessions/common/tls.py; README, "TLS")
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) to serve "
                                       "HTTPS with; set with LUCID_TLS_KEY_FILE")
    tls_key_file: Path | None = Field(None, description="PEM private key of LUCID_TLS_CERT_FILE "
                                      "(a secret file)")
    tls_ca_file: Path | None = Field(None, description="PEM CA bundle an https:// upstream "
                                     "service must chain to (unset: the system's CAs)")
    tls_client_ca_file: Path | None = Field(None, description="mutual TLS: accept only clients "
                                            "presenting a certificate this CA bundle signed")
    tls_client_cert_file: Path | None = Field(None, description="mutual TLS: the certificate "
                                              "this service presents to its upstream")
    tls_client_key_file: Path | None = Field(None, description="mutual TLS: the private key of "
                                             "LUCID_TLS_CLIENT_CERT_FILE (a secret file)")

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

    @property
    def upstream_url(self) -> str | None:
        """Return the URL of the service this one calls (None: it calls none)."""
        return None

    @property
    def listen_uds(self) -> Path | None:
        """Return the Unix socket this service listens on besides its port (None: none)."""
        return None

    @property
    def upstream_uds(self) -> Path | None:
        """Return the Unix socket the upstream is reached on instead of TCP (None: TCP)."""
        return None

    def preflight(self) -> None:
        """Read every secret the service needs, so a missing one stops it before it serves."""
        self.service_token()
        self.tls_files()
        self.upstream_tls()
        self.check_sockets()

    def check_sockets(self) -> None:
        """Raise ConfigError for a Unix socket that cannot work: a path longer than the
        kernel takes, a socket served or reached with TLS (plain http only)."""
        upstream = self.upstream_url or ""
        for path, serving in ((self.listen_uds, True), (self.upstream_uds, False)):
            if path is None:
                continue
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                raise ConfigError(f"Unix socket path {str(path)[:80]!r}... is longer than "
                                  f"{MAX_SOCKET_PATH} bytes")
            if serving and self.tls_cert_file is not None:
                raise ConfigError(f"the Unix socket {path} is plain http: unset it to serve TLS")
            if not serving and not upstream.lower().startswith("http://"):
                raise ConfigError(f"the Unix socket {path} is plain http, but the upstream "
                                  f"{upstream} is not: unset one of them")

    def tls_files(self) -> tuple[Path | None, Path | None]:
        """Return the (certificate, key) files to serve HTTPS with, (None, None) for HTTP.

        Raises ConfigError unless both or neither are set, readable, and a matching pair.
        """
        return server_files(self.tls_cert_file, self.tls_key_file,
                            client_ca=self.tls_client_ca_file)

    def upstream_tls(self) -> ssl.SSLContext | None:
        """Return the context verifying an https:// upstream; None for http:// or none.

        Raises ConfigError if a TLS client setting is given for a plain-http upstream
        (it would be silently unused), or if its files are unusable.
        """
        url = self.upstream_url
        if url is None:
            return None
        if not url.lower().startswith("https://"):
            given = [name for name, value in (
                ("LUCID_TLS_CA_FILE", self.tls_ca_file),
                ("LUCID_TLS_CLIENT_CERT_FILE", self.tls_client_cert_file),
                ("LUCID_TLS_CLIENT_KEY_FILE", self.tls_client_key_file)) if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} set, but the upstream {url} is plain "
                                  "http: use an https:// URL, or unset them")
            return None
        return client_context(self.tls_ca_file, cert=self.tls_client_cert_file,
                              key=self.tls_client_key_file)

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
