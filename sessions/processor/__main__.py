"""`python -m sessions.processor`: the chunk processor, as its container runs it."""

from __future__ import annotations

from sessions.common.serve import serve
from sessions.processor.config import load_settings
from sessions.processor.main import create_app


def main() -> int:
    """Serve the chunk processor until stopped; return the exit status (2: a bad configuration)."""
    return serve("processor", load_settings, create_app)


if __name__ == "__main__":
    raise SystemExit(main())
