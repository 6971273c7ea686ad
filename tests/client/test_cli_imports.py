"""Every CLI command pays the CLI's imports once: they stay free of the services' web stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB_STACK = ("fastapi", "starlette", "uvicorn")
SERVICES = ("sessions.api", "sessions.processor", "sessions.storage")

PROBE = """
import sys
import sessions.client.cli
web, services = {web!r}, {services!r}
print(sorted(m for m in sys.modules if m.split(".")[0] in web or m.startswith(services)))
"""


def test_the_cli_imports_no_web_framework_and_no_service() -> None:
    """`lucid-sessions upload` needs httpx and pydantic, never FastAPI, uvicorn or a service's
    code (FastAPI alone costs about 0.3 s of start-up per command)."""
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", PROBE.format(web=WEB_STACK, services=SERVICES)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]", f"the CLI imported: {out.strip()}"
