"""The CLI's stdout and stderr stay apart when both go to one file (issue 12, defect 10).

`lucid-sessions verify` ran two lines together (`… root okwarning: …`).  Each test
runs the real CLI against the live gateway with stderr merged into stdout
(`2>&1`), as a log or a CI job captures it, and checks that every message starts
a line of its own and that lines come out in the order the program wrote them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import CHUNK, recorded_session, session_bytes

pytestmark = pytest.mark.e2e

TIMEOUT = 60


def merged(cluster: Cluster, cwd: Path, *args: str) -> tuple[int, list[str]]:
    """Run the CLI with stderr into stdout; return its status and its lines, split on \\n."""
    # As a user runs it: not PYTHONUNBUFFERED (the services' setting), so stdout is
    # block-buffered, as it is whenever it is not a terminal.
    env = {k: v for k, v in cluster.env.items()
           if not k.startswith("LUCID_") and k != "PYTHONUNBUFFERED"}
    env |= {"LUCID_URL": cluster.url("api"), "XDG_CACHE_HOME": str(cwd / "cache"),
            "LUCID_TOKEN_FILE": str(cluster.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.client", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT, check=False)
    text = proc.stdout.decode("utf-8")
    assert "Traceback" not in text, text
    return proc.returncode, text.split("\n")


def written(lines: list[str]) -> list[str]:
    """Return the lines as a terminal would end up showing them: a bar's redraws collapse."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in lines]


@pytest.fixture(scope="module")
def sid(api: httpx.Client) -> str:
    return str(recorded_session(api, session_bytes(3 * CHUNK + 17, seed=1210))["id"])


@pytest.mark.parametrize("extra", [[], ["--progress"]], ids=["plain", "progress"])
def test_verify_warning_and_verdict_are_separate_lines(cluster: Cluster, tmp_path: Path,
                                                       sid: str, extra: list[str]) -> None:
    status, lines = merged(cluster, tmp_path, "verify", sid, *extra)
    assert status == 0, lines
    shown = written(lines)
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning: the verifier key")]
    verdicts = [i for i, line in enumerate(shown) if line.startswith(f"OK: session {sid}:")]
    assert len(warnings) == 1 and len(verdicts) == 1, lines
    assert warnings[0] < verdicts[0], lines
    assert shown[verdicts[0]].endswith("signature ok; root ok"), lines
    assert not any("warning" in line for line in shown if not line.startswith("warning:")), lines


def test_proof_output_keeps_the_order_it_was_written_in(cluster: Cluster, tmp_path: Path,
                                                        sid: str) -> None:
    """The proof (stdout) is printed before the trust warning and the verdict (stderr)."""
    status, lines = merged(cluster, tmp_path, "proof", sid, "1")
    assert status == 0, lines
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning:"))
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verified: chunk 1"))
    assert json.loads("\n".join(lines[:warning]))["index"] == 1, lines
    assert warning < verdict and lines[verdict + 1:] == [""], lines


@pytest.fixture
def unreadable_chunk(cluster: Cluster, sid: str) -> Iterator[None]:
    """Chunk 1 becomes a directory: storage cannot read it (503), whoever runs the tests."""
    path = cluster.chunk_file(sid, 1)
    saved = path.read_bytes()
    path.unlink()
    path.mkdir()
    try:
        yield
    finally:
        shutil.rmtree(path)
        path.write_bytes(saved)


def test_an_error_during_the_progress_bar_starts_its_own_line(
        cluster: Cluster, tmp_path: Path, sid: str, node: dict[str, str],
        unreadable_chunk: None) -> None:
    status, lines = merged(cluster, tmp_path, "verify", sid, "--progress",
                           "--key", node["verifier_key"])
    assert status == 1, lines
    errors = [line for line in lines if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), lines
    assert any("\r" in line and "MB/s" in line for line in lines), "no progress bar drawn"
