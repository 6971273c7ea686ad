"""`LUCID_METADATA_URL`: which metadata backend, where, and how to name it without secrets.

    sqlite:///absolute/path/metadata.sqlite3        (sqlite:////abs or sqlite:///rel also work)
    mongodb://user@host1,host2/lucid?replicaSet=rs0   (the database is the URL's path)
    mongodb+srv://cluster.example.net/lucid
    mongodb://db.example.net/lucid?tls=true&tlsCAFile=/run/secrets/mongo-ca.pem   (PyMongo TLS)

A URL holding a password is a secret: it comes from a file (`LUCID_METADATA_URL_FILE`),
or its password from `LUCID_METADATA_PASSWORD_FILE`.  `MetadataUrl.redacted` is the
only form that may reach a log line, a `/ready` reason or an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from sessions.common.secrets import ConfigError

SCHEMES = ("sqlite", "mongodb", "mongodb+srv")
_DB_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")
_USERINFO = re.compile(r"(?<=://)[^@/]*@")
_SECRET_OPTION = re.compile(r"(?i)([?&]tlsCertificateKeyFilePassword=)[^&#]*")
"""The one URL option holding a secret: the passphrase of a TLS client key."""


def redact(url: str) -> str:
    """Return url with any user:password@ part, and a TLS key's passphrase, replaced by `***`;
    never raises."""
    return _SECRET_OPTION.sub(r"\1***", _USERINFO.sub("***@", url))


def holds_secret(url: str) -> bool:
    """Return whether url carries a password or a TLS key's passphrase (then it must come
    from a file)."""
    userinfo = _USERINFO.search(url)
    return (userinfo is not None and ":" in userinfo.group()) or bool(_SECRET_OPTION.search(url))


@dataclass(frozen=True)
class MetadataUrl:
    """A parsed metadata URL; `url` is the full (possibly secret) text, `redacted` the loggable."""

    scheme: str
    url: str = field(repr=False)
    path: Path = Path()
    database: str = ""

    @property
    def redacted(self) -> str:
        return redact(self.url)

    def __str__(self) -> str:
        return self.redacted


def parse(url: str, *, password: str | None = None) -> MetadataUrl:
    """Return the parsed URL; raise ConfigError (naming only the redacted URL) if it is bad.

    `password`, if given, is put into a mongodb URL that names a user and no password.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ConfigError(f"LUCID_METADATA_URL must start with sqlite:///, mongodb:// or "
                          f"mongodb+srv:// (got {redact(url)!r})")
    if scheme == "sqlite":
        return _sqlite(url)
    return _mongo(url, scheme, password)


def _sqlite(url: str) -> MetadataUrl:
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or len(rest) < 2 or "?" in rest:
        raise ConfigError("LUCID_METADATA_URL: a SQLite URL is sqlite:///path/to/file.sqlite3")
    raw = rest[1:]  # sqlite:///rel -> rel; sqlite:////abs -> /abs
    return MetadataUrl(scheme="sqlite", url=url, path=Path(unquote(raw)))


def _mongo(url: str, scheme: str, password: str | None) -> MetadataUrl:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"LUCID_METADATA_URL is not a URL ({redact(url)!r})") from None
    database = parts.path.lstrip("/")
    if not parts.netloc or _DB_NAME.fullmatch(database) is None:
        raise ConfigError(f"LUCID_METADATA_URL must name the database, as in "
                          f"mongodb://host:27017/lucid (got {redact(url)!r})")
    if password is not None:
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if not at or ":" in userinfo:
            raise ConfigError("LUCID_METADATA_PASSWORD_FILE needs a URL with a user name and no "
                              "password, as in mongodb://lucid@host/lucid")
        url = url.replace(f"{userinfo}@", f"{userinfo}:{quote(password, safe='')}@", 1)
    return MetadataUrl(scheme=scheme, url=url, database=database)
