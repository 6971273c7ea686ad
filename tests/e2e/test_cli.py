"""The `lucid-sessions` client commands, run as subprocesses against the live gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Cluster
from tests.e2e.support import ID_RE, MIB, session_bytes

pytestmark = pytest.mark.e2e

TIMEOUT = 60


def cli(cluster: Cluster, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `python -m sessions.cli ARGS` as a user would; check the exit status if `ok`."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": cluster.url("api"),
            "LUCID_TOKEN_FILE": str(cluster.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.cli", *args], cwd=REPO, env=env, text=True,
        capture_output=True, timeout=TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert cluster.admin_token not in output, "the CLI printed the token"
    if ok:
        assert proc.returncode == 0, (args, proc.returncode, output)
    return proc


@pytest.fixture(scope="module")
def recording_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = session_bytes(3 * MIB + 4321, seed=130)
    path = tmp_path_factory.mktemp("cli") / "session.rec"
    path.write_bytes(data)
    return path, data


def _upload(cluster: Cluster, path: Path) -> str:
    out = cli(cluster, "upload", str(path)).stdout
    ids = ID_RE.findall(out)
    assert ids, out
    return ids[0]


def test_cli_round_trip(cluster: Cluster, recording_file: tuple[Path, bytes],
                        tmp_path: Path) -> None:
    path, data = recording_file
    sid = _upload(cluster, path)

    out = tmp_path / "replayed.rec"
    cli(cluster, "replay", sid, "-o", str(out))
    assert out.read_bytes() == data

    assert sid in cli(cluster, "ls").stdout
    shown = cli(cluster, "show", sid).stdout
    assert sid in shown and "completed" in shown
    proof = cli(cluster, "proof", sid, "0").stdout
    assert proof.strip()
    cli(cluster, "verify", sid)

    cli(cluster, "rm", sid)
    assert "deleted" in cli(cluster, "show", sid).stdout


def test_cli_verify_finds_a_tampered_chunk(cluster: Cluster,
                                           recording_file: tuple[Path, bytes]) -> None:
    path, _ = recording_file
    sid = _upload(cluster, path)
    cli(cluster, "verify", sid)
    chunk = cluster.chunk_file(sid, 2)
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 3] ^= 0x01
    chunk.write_bytes(bytes(blob))

    proc = cli(cluster, "verify", sid, ok=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    report = proc.stdout + proc.stderr
    assert "2" in report and ("altered" in report or "chunk" in report), report


def test_cli_errors_are_clean(cluster: Cluster) -> None:
    proc = cli(cluster, "show", "not-an-id", ok=False)
    assert proc.returncode != 0
    proc = cli(cluster, "show", "0" * 26, ok=False)
    assert proc.returncode != 0
