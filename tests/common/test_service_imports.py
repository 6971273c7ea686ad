"""What a service loads at rest: only the modules of the backends it is configured with.

Each service is started as its container starts it (`python -m sessions.<name>`'s module,
its settings, its app, its lifespan) in a fresh interpreter with the embedded stores
(SQLite metadata, chunk files on disk).  Every module imported stays resident for the
process's life, so a driver or a library the configuration does not use is memory the
budget (README, "Memory: one budget for the whole processor") pays for nothing: the
MongoDB driver, the S3 client (obstore's Rust runtime), httpx's command line (rich,
pygments), uvicorn's WebSocket protocol (no route is a WebSocket), and in storage,
which calls no other service, httpx itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.client.launcher import REPO

UNUSED = ("pymongo", "bson", "obstore", "rich", "pygments", "websockets")
CALLS_NO_SERVICE = ("httpx", "httpcore", "h11")
"""Storage calls no other service: it has no use for an HTTP client."""

PROBE = """
import asyncio, importlib, json, sys
name = sys.argv[1]
importlib.import_module(f"sessions.{name}.__main__")
settings = importlib.import_module(f"sessions.{name}.config").load_settings()
app = importlib.import_module(f"sessions.{name}.main").create_app(settings)
from sessions.common.serve import uvicorn_config
uvicorn_config(app, settings, cert=None, key=None).load()  # loads its protocols as `serve` does

async def started() -> None:
    async with app.router.lifespan_context(app):
        pass

asyncio.run(started())
loaded = sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("name", ["storage", "processor", "api"])
def test_a_service_loads_no_unused_backend(name: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LUCID_DATA_DIR": str(tmp_path),
           "LUCID_SCRUB_INTERVAL": "0", "LUCID_SWEEP_INTERVAL": "0",
           "LUCID_STORAGE_URL": "http://127.0.0.1:9", "LUCID_PROCESSOR_URL": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", PROBE, name], env=env, cwd=tmp_path,  # noqa: S603
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert {"fastapi", "uvicorn", "sessions"} <= loaded  # the probe did start the service
    unused = set(UNUSED)
    if name == "storage":
        assert "sqlite3" in loaded  # the embedded metadata store was opened
        unused |= set(CALLS_NO_SERVICE)
    else:
        assert "httpx" in loaded  # its client of the next service
    assert not loaded & unused, sorted(loaded & unused)

