"""schemathesis against each service's own OpenAPI document, on real processes on loopback.

`schemathesis run` with every check and all four phases (examples, coverage, fuzzing,
stateful), a bounded number of examples per operation and a time budget per service,
must find nothing.  The services run in a cluster of their own: the storage run
creates sessions with made-up wrapped keys straight in storage, which no other test
should meet.  The gateway runs first and storage last, so each run meets only data
its own API (or an API above it) made.

A check is configured (expected statuses) or switched off for one operation only in
CONFIG below, each with its reason beside it; README "API contract (OpenAPI)" lists them.
The upload bodies are fuzzed separately through the real PATCH path (test_upload_fuzz.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.client.launcher import REPO
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("LUCID_SCHEMATHESIS_EXAMPLES", "10"))
MAX_SECONDS = int(os.environ.get("LUCID_SCHEMATHESIS_SECONDS", "30"))  # per service
SEED = os.environ.get("LUCID_SCHEMATHESIS_SEED", "20261201")
RUN_TIMEOUT = 600  # a hung run fails the test instead of hanging CI

# Every entry names one operation, one check, and why; nothing else is configured.
CONFIG = """
# Relations between a request and the server's state or between two fields that no
# JSON schema can state.  Positive (schema-valid) requests may meet these 4xx:

[[operations]]
include-path-regex = "/proof/(inclusion|consistency)$|/checkpoint$|/leaves$"
include-method = "GET"
# `index`, `size`, `from` and `to` are bounded by the session's committed chunk count,
# which the schema cannot know: a larger one is 422 `invalid_parameter`.
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 422]

[[operations]]
include-path-regex = "/replay$"
include-method = "GET"
# A single Range past the end of the stream is 416 (RFC 9110 §15.5.17); its bound is
# the session's size, which the schema cannot know.
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 416]

[[operations]]
include-path-regex = "/upload$"
include-method = "PATCH"
# `Upload-Offset` must equal the committed offset (409 `offset_mismatch`); a body whose
# SHA-256 differs from `Upload-Checksum` is 460 `checksum_mismatch` (tus checksum).
# schemathesis also sends an *empty* optional `Upload-Checksum` as a valid one; the
# service refuses it with 400 `bad_request` rather than read it as "no checksum".
# An offset plus body past LUCID_MAX_SESSION_BYTES (a setting, not in the schema) is 413.
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 404, 409, 413, 460]

[[operations]]
include-path-regex = "^/internal/v1/sessions/\\\\{session_id\\\\}/chunks/\\\\{index\\\\}$"
include-method = "PUT"
# Storage: the body must have its `Upload-Checksum` (400 `chunk_checksum_mismatch`), or
# without one hash to `X-Lucid-Leaf-Hash` (400 `leaf_hash_mismatch`).
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 400]

[[operations]]
include-path-regex = "^/internal/v1/sessions/\\\\{session_id\\\\}/chunks/\\\\{index\\\\}$"
include-method = "GET"
# Storage: a `Range` of the documented shape may still be `bytes=5-2` (last below first:
# 400 `invalid_range`) or start past the chunk's sealed length, which the schema cannot
# know (416 `range_not_satisfiable`).
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 400, 416]

[[operations]]
include-path-regex = "^/internal/v1/sessions/\\\\{session_id\\\\}/commit$"
include-method = "POST"
# Storage: a commit past the session's declared `upload_length` (tus Upload-Length) is 413
# `payload_too_large`; the length is the session's, which the schema cannot know.
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 400, 413]

[[operations]]
include-path-regex = "^/internal/v1/sessions/\\\\{session_id\\\\}/state$"
include-method = "POST"
# Storage: `to: deleted` is in the shared state enum but is 400 `bad_request`: a session
# is deleted only by DELETE, which erases its key before anything else.
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 400]

[[operations]]
include-path-regex = "^/(v1|internal/v1)/sessions/\\\\{session_id\\\\}$"
include-method = "GET"
# A deleted session answers its tombstone (200, `state: deleted`), deliberately: a client
# can tell an erased recording from an id never issued (404).  Every sub-resource of a
# deleted session answers 409 `invalid_state`, so use_after_free holds everywhere else.
checks.use_after_free.enabled = false

[[operations]]
include-path-regex = "^/v1/sessions/\\\\{session_id\\\\}/upload$"
include-method = "OPTIONS"
# tus discovery (tus 1.0 "OPTIONS") describes the server, not one upload: it answers 204
# on any upload URL without looking the session up (also a CORS preflight), deleted or not.
checks.use_after_free.enabled = false
"""


def run_schemathesis(cluster: Cluster, service: str,
                     workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `schemathesis run` against one service of cluster; return the finished process."""
    token = cluster.admin_token if service == "api" else cluster.secret("service.token")
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
           "run", cluster.url(service) + "/openapi.json",
           "--header", f"Authorization: Bearer {token}",
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_SECONDS),
           "--seed", SEED, "--workers", "1",
           "--request-timeout", "30", "--generation-database", "none",
           "--suppress-health-check", "too_slow"]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=RUN_TIMEOUT, check=False)


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("schemathesis"))
    try:
        c.start_all()
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("service", ["api", "processor", "storage"])
def test_schemathesis_finds_nothing(fuzz_cluster: Cluster, tmp_path: Path, service: str) -> None:
    start = fuzz_cluster.log_sizes()
    done = run_schemathesis(fuzz_cluster, service, tmp_path)
    report = done.stdout[-20000:] + done.stderr[-5000:]
    assert done.returncode == 0, f"schemathesis found something on {service}:\n{report}"
    assert "failures" not in done.stdout.splitlines()[-1], report
    assert " passed" in report and "Stateful" in report, report  # it did run, stateful included
    problems = fuzz_cluster.log_problems(start)
    assert not problems, "\n\n".join(problems)
