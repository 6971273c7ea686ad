"""The public gateway: authenticates clients, serves `/v1` and streams bytes to the processor.

It holds no keys and stores nothing; every operation is forwarded to the chunk
processor's `/internal/v1` with the service token.
"""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """Return the installed version of lucid-sessions, or "0.0.0+local" from a bare checkout."""
    try:
        return metadata.version("lucid-sessions")
    except metadata.PackageNotFoundError:
        return "0.0.0+local"
