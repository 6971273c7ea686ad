"""`python -m sessions.api`: the public gateway, as its container runs it."""

from __future__ import annotations

from sessions.api.config import load_settings
from sessions.api.main import create_app
from sessions.common.serve import serve


def main() -> int:
    """Serve the public gateway until stopped; return the exit status (2: a bad configuration)."""
    return serve("api", load_settings, create_app)


if __name__ == "__main__":
    raise SystemExit(main())
