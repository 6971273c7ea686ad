"""Storage settings: the common `LUCID_` settings, port, chunk size cap and metadata URL."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from sessions.common.secrets import ConfigError, read_secret_file
from sessions.common.settings import CommonSettings, load
from sessions.common.tls import client_context
from sessions.storage.dburl import MetadataUrl, holds_secret, parse

DEFAULT_MAX_CHUNK_BYTES = 16 * 1024 * 1024 + 4096
METADATA_FILE = "metadata.sqlite3"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
PREFIX = re.compile(r"(?:[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*)?")


@dataclass(frozen=True)
class S3Location:
    """Where the chunks live and the credentials to reach them (`repr` hides the secret)."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    root_certificate: str | None = field(default=None, repr=False)  # PEM: LUCID_S3_CA_FILE

    @property
    def redacted(self) -> str:
        """Return a loggable name of the location: endpoint, bucket and prefix only."""
        return f"s3://{self.bucket}/{self.prefix} at {_redact(self.endpoint or 'AWS S3')}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """Return (bucket, prefix) of `s3://bucket[/prefix]`; raise ConfigError if it is not one.

    Credentials never go in the URL (they come from files), so a URL with user info,
    a query or a fragment is refused, and the message shows it redacted.
    """
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if (parts.scheme != "s3" or "@" in parts.netloc or parts.query or parts.fragment
            or not BUCKET_NAME.fullmatch(bucket) or not PREFIX.fullmatch(prefix)
            or {".", ".."} & set(prefix.split("/"))):
        raise ConfigError("LUCID_CHUNK_STORE_URL must look like s3://bucket/prefix (a bucket "
                          "of 3-63 lowercase letters, digits, dots and dashes; no credentials; "
                          f"got {_redact(url)!r})")
    return bucket, prefix


def _redact(url: str) -> str:
    """Return url without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))




class Settings(CommonSettings):
    """Settings of the storage service (`LUCID_STORAGE_PORT`, `LUCID_MAX_CHUNK_BYTES`, ...)."""

    storage_port: int = Field(8086, ge=1, le=65535, description="port to listen on")
    storage_uds: Path | None = Field(None, description="Unix socket storage also listens "
                                     "on, and the processor reaches it on instead of TCP "
                                     "(plain http); unset: TCP only")
    max_chunk_bytes: int = Field(DEFAULT_MAX_CHUNK_BYTES, ge=1, le=1 << 30,
                                 description="largest sealed chunk accepted, in bytes")
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0, description="free-disk watermark: "
                                "a chunk that would leave less free space on the chunk volume "
                                "is refused with 507 insufficient_storage (0: no watermark)")
    metadata_url: str | None = Field(None, description="sqlite:///path (default: under the "
                                     "data dir), mongodb://host/db or mongodb+srv://host/db; "
                                     "no password here")
    metadata_url_file: Path | None = Field(None, description="file holding the metadata URL "
                                           "(use it when the URL carries credentials)")
    metadata_password_file: Path | None = Field(None, description="file holding the password "
                                                "of the user the metadata URL names")
    # The S3 chunk store (sessions/storage/s3store.py); unset: the local directory.
    chunk_store_url: str | None = Field(None, description="s3://bucket/prefix: keep sealed "
                                        "chunks in S3-compatible object storage (no "
                                        "credentials here; unset: the local data dir)")
    s3_endpoint: str | None = Field(None, description="the object store's URL, e.g. "
                                    "https://s3.example.org (unset: AWS S3)")
    s3_region: str = Field("us-east-1", description="the object store's region")
    s3_access_key_file: Path | None = Field(None, description="file holding the S3 access "
                                            "key id")
    s3_secret_key_file: Path | None = Field(None, description="file holding the S3 secret "
                                            "access key")
    s3_ca_file: Path | None = Field(None, description="PEM CA bundle trusted for an https:// "
                                    "S3 endpoint, besides the system's CAs (README, TLS)")
    s3_put_buffer_mb: int = Field(17, ge=1, le=4096, description="MiB of chunk bodies held "
                                  "in memory at once for their PUTs to S3; further uploads "
                                  "wait their turn (sized for storage's 100 MB budget)")

    orphan_grace_seconds: float = Field(3600.0, ge=60, le=30 * 86400, description="age "
                                        "after which a stored chunk no commit names is "
                                        "removed while storage serves; a commit refuses a "
                                        "chunk staged more than half of it ago (size it well "
                                        "above the longest PUT)")
    orphan_sweep_seconds: float = Field(600.0, ge=0, description="seconds between orphan "
                                        "sweep passes (0: at start-up only)")

    @property
    def port(self) -> int:
        return self.storage_port

    @property
    def listen_uds(self) -> Path | None:
        return self.storage_uds

    @property
    def storage_dir(self) -> Path:
        """Return the directory holding chunk files and the metadata database."""
        return self.data_dir / "storage"

    def preflight(self) -> None:
        """Read the service token and the metadata URL now (a bad URL is named, redacted)."""
        super().preflight()
        self.metadata()
        self.chunk_store_location()

    def metadata(self) -> MetadataUrl:
        """Return the metadata URL (from the file if set); raise ConfigError if it is bad.

        A password may come only from a file: the URL file or the password file.
        """
        if self.metadata_url is not None and self.metadata_url_file is not None:
            raise ConfigError("set LUCID_METADATA_URL or LUCID_METADATA_URL_FILE, not both")
        if self.metadata_url_file is not None:
            text = read_secret_file(self.metadata_url_file, what="metadata URL")
        elif self.metadata_url is not None:
            text = self.metadata_url
            if holds_secret(text):
                raise ConfigError("LUCID_METADATA_URL must not hold a password; put the URL in "
                                  "LUCID_METADATA_URL_FILE or the password in "
                                  "LUCID_METADATA_PASSWORD_FILE")
        else:
            return parse("sqlite:///" + str(self.storage_dir / METADATA_FILE))
        password = None
        if self.metadata_password_file is not None:
            password = read_secret_file(self.metadata_password_file, what="metadata password")
        return parse(text, password=password)


    def chunk_store_location(self) -> S3Location | None:
        """Return the S3 location of the chunks (None: the local directory); raise ConfigError
        if the URL is bad or its credential files are missing."""
        if self.chunk_store_url is None:
            return None
        bucket, prefix = parse_s3_url(self.chunk_store_url)
        if self.s3_access_key_file is None or self.s3_secret_key_file is None:
            raise ConfigError("LUCID_CHUNK_STORE_URL=s3://... needs LUCID_S3_ACCESS_KEY_FILE "
                              "and LUCID_S3_SECRET_KEY_FILE")
        return S3Location(
            bucket=bucket, prefix=prefix, endpoint=self.s3_endpoint, region=self.s3_region,
            access_key_id=read_secret_file(self.s3_access_key_file, what="S3 access key id"),
            secret_access_key=read_secret_file(self.s3_secret_key_file,
                                               what="S3 secret access key"),
            root_certificate=self._s3_root_certificate())

    def _s3_root_certificate(self) -> str | None:
        """Return the PEM text of LUCID_S3_CA_FILE (None if unset); ConfigError if it is not
        a CA bundle, or if the endpoint is not https (the file would go unused)."""
        if self.s3_ca_file is None:
            return None
        if not (self.s3_endpoint or "").lower().startswith("https://"):
            raise ConfigError("LUCID_S3_CA_FILE is set, but LUCID_S3_ENDPOINT is not an "
                              "https:// URL: use https, or unset it")
        client_context(self.s3_ca_file, env="LUCID_S3_CA_FILE")  # parses, or names the file
        return read_secret_file(self.s3_ca_file, what="LUCID_S3_CA_FILE")


def load_settings() -> Settings:
    """Return storage settings from the environment; raise ConfigError naming bad variables."""
    return load(Settings)
