"""`python -m sessions.storage`: session storage, as its container runs it."""

from __future__ import annotations

from sessions.common.serve import serve
from sessions.storage.config import load_settings
from sessions.storage.main import create_app


def main() -> int:
    """Serve session storage until stopped; return the exit status (2: a bad configuration)."""
    return serve("storage", load_settings, create_app)


if __name__ == "__main__":
    raise SystemExit(main())
