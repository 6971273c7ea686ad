"""Secrets come from files (Docker secrets in production), never from images or logs.

In local mode a missing secret is generated once into `<data_dir>/secrets/`,
mode 0600, and its path is reported.  In production mode every secret file must
be configured explicitly and exist, or the service refuses to start.
"""

from __future__ import annotations

import os
import secrets as _secrets
from collections.abc import Callable
from pathlib import Path

PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "password", "token", "xxx",
                          "example", "placeholder", "todo", "default"})
MIN_TOKEN_LENGTH = 32


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and how to fix it."""


def new_token() -> str:
    """Return a fresh 256-bit url-safe bearer token."""
    return _secrets.token_urlsafe(32)


def check_token(value: str, *, what: str) -> str:
    """Return value if it is usable as a bearer token; raise ConfigError otherwise."""
    if value.strip().lower() in PLACEHOLDERS or len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{what} must be a random string of at least {MIN_TOKEN_LENGTH} "
                          "characters, not a placeholder")
    if any(c.isspace() for c in value):
        raise ConfigError(f"{what} must not contain whitespace")
    return value


def read_secret_file(path: Path, *, what: str) -> str:
    """Return the stripped text of a secret file; raise ConfigError if it is absent or empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: file {path} cannot be read ({type(exc).__name__})") from None
    if not text:
        raise ConfigError(f"{what}: file {path} is empty")
    return text


def write_new_secret(path: Path, text: str) -> bool:
    """Create path with mode 0600 holding text; return False if it already existed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text.rstrip("\n") + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def load_or_create(configured: Path | None, *, default: Path, production: bool, what: str,
                   env: str, generate: Callable[[], str],
                   announce: Callable[[str], None] | None = None) -> str:
    """Return a secret's text from its configured file, generating it in local mode.

    Production: `configured` must be set (via `env`) and the file must exist.
    Local: an unset `configured` means `default`; a missing default file is generated.
    """
    if production and configured is None:
        raise ConfigError(f"{what}: production mode needs {env} pointing at a secret file")
    path = configured if configured is not None else default
    if not production and configured is None and write_new_secret(path, generate()):
        if announce is not None:
            announce(f"generated {what} at {path} (mode 0600)")
    return read_secret_file(path, what=what)
