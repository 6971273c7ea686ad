"""What the container tests share: the engine, the Debian docker client, loud skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOCKER = "/usr/bin/docker"
"""Debian's docker.io client: it has BuildKit for this engine (the newer one here does not)."""


def unavailable(reason: str) -> NoReturn:
    """Skip loudly, or fail where LUCID_REQUIRE_CONTAINERS=1 says the engine must be there."""
    message = f"CONTAINER TESTS NOT RUN: {reason}"
    print(f"\n*** {message} ***", file=sys.stderr)
    if os.environ.get("LUCID_REQUIRE_CONTAINERS") == "1":
        pytest.fail(message + " (LUCID_REQUIRE_CONTAINERS=1)", pytrace=False)
    pytest.skip(message)


def run(cmd: list[str], *, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False,  # noqa: S603
                            env=env, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def start_engine() -> None:
    """Run engine.sh; skip loudly (or fail, under LUCID_REQUIRE_CONTAINERS=1) without one."""
    engine = subprocess.run(["bash", str(HERE / "engine.sh")], capture_output=True,  # noqa: S603, S607
                            text=True, check=False, timeout=900)
    if engine.returncode != 0:
        unavailable(engine.stderr.strip().splitlines()[-1] if engine.stderr else "engine.sh")
