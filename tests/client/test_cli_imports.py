"""Every CLI command pays the CLI's imports once: they stay free of the services' web stack,
and of pydantic and httpx, which only the commands that use them load (a replay from a
plain-http gateway never does: tests/e2e/test_cli_replay.py runs one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB_STACK = ("fastapi", "starlette", "uvicorn")
LOADED_BY_USE = ("pydantic", "pydantic_core", "httpx", "httpcore", "h11")
SERVICES = ("sessions.api", "sessions.processor", "sessions.storage")

PROBE = """
import sys
import sessions.client.cli
from sessions.client.cli import build_parser
build_parser()
web, services = {web!r}, {services!r}
print(sorted(m for m, v in sys.modules.items()
             if v is not None and (m.split(".")[0] in web or m.startswith(services))))
"""


def test_the_cli_imports_no_web_framework_and_no_service() -> None:
    """Not FastAPI, uvicorn or a service's code (FastAPI alone costs about 0.3 s of start-up
    per command), nor pydantic and httpx (about 0.1 s) until a command uses them."""
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", PROBE.format(web=WEB_STACK + LOADED_BY_USE, services=SERVICES)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]", f"the CLI imported: {out.strip()}"
