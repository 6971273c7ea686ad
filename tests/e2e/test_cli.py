"""The `lucid-sessions` client commands, run as subprocesses against the live gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import ID_RE, MIB, session_bytes

pytestmark = pytest.mark.e2e

TIMEOUT = 60


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI's working directory and cache home, so its resume state stays out of the repo."""
    return tmp_path_factory.mktemp("cli")


def cli(cluster: Cluster, workdir: Path, *args: str, ok: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """Run `python -m sessions.client ARGS` as a user would; check the exit status if `ok`."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": cluster.url("api"), "XDG_CACHE_HOME": str(workdir / "cache"),
            "LUCID_TOKEN_FILE": str(cluster.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.client", *args], cwd=workdir, env=env, text=True,
        capture_output=True, timeout=TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert cluster.admin_token not in output, "the CLI printed the token"
    if ok:
        assert proc.returncode == 0, (args, proc.returncode, output)
    return proc


@pytest.fixture(scope="module")
def recording_file(workdir: Path) -> tuple[Path, bytes]:
    data = session_bytes(3 * MIB + 4321, seed=130)
    path = workdir / "session.rec"
    path.write_bytes(data)
    return path, data


def _upload(cluster: Cluster, workdir: Path, path: Path, *extra: str) -> str:
    out = cli(cluster, workdir, "upload", str(path), *extra).stdout
    assert ID_RE.fullmatch(out.strip().splitlines()[-1]), out
    return out.strip().splitlines()[-1]


def test_cli_round_trip(cluster: Cluster, workdir: Path,
                        recording_file: tuple[Path, bytes]) -> None:
    path, data = recording_file
    sid = _upload(cluster, workdir, path, "--label", "user=cli")

    out = workdir / "replayed.rec"
    cli(cluster, workdir, "replay", sid, "-o", str(out))
    assert out.read_bytes() == data
    part = workdir / "part.rec"
    cli(cluster, workdir, "replay", sid, "-o", str(part), "--range", f"{MIB - 2}-{MIB + 2}")
    assert part.read_bytes() == data[MIB - 2:MIB + 3]

    listing = cli(cluster, workdir, "ls", "--label", "user=cli").stdout
    assert sid in listing
    shown = json.loads(cli(cluster, workdir, "show", sid).stdout)
    assert shown["id"] == sid and shown["state"] == "completed"
    assert shown["offset"] == len(data) and shown["chunk_count"] == 4
    assert "wrapped_key" not in shown

    proof = cli(cluster, workdir, "proof", sid, "0")
    assert json.loads(proof.stdout)["index"] == 0
    assert "verified" in proof.stderr

    verified = cli(cluster, workdir, "verify", sid)
    assert "OK" in verified.stdout and "FAIL" not in verified.stdout

    cli(cluster, workdir, "rm", sid)
    assert json.loads(cli(cluster, workdir, "show", sid).stdout)["state"] == "deleted"


def test_cli_verify_names_a_tampered_chunk(cluster: Cluster, workdir: Path,
                                           recording_file: tuple[Path, bytes]) -> None:
    path, _ = recording_file
    sid = _upload(cluster, workdir, path, "--label", "user=cli-tamper")
    cli(cluster, workdir, "verify", sid)
    chunk = cluster.chunk_file(sid, 2)
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 3] ^= 0x01
    chunk.write_bytes(bytes(blob))

    proc = cli(cluster, workdir, "verify", sid, ok=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL: chunk")]
    assert len(fails) == 1 and fails[0].startswith("FAIL: chunk 2:"), proc.stdout


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256", "md5"])
def test_cli_uploads_with_the_checksum_asked_for(cluster: Cluster, workdir: Path,
                                                 recording_file: tuple[Path, bytes],
                                                 algorithm: str) -> None:
    """Every request carries the digest (a wrong one would be 460 and fail the upload)."""
    path, data = recording_file
    sid = _upload(cluster, workdir, path, "--checksum", algorithm, "--request-mib", "1")
    out = workdir / f"replayed-{algorithm}.rec"
    cli(cluster, workdir, "replay", sid, "-o", str(out))
    assert out.read_bytes() == data


def test_cli_refuses_an_unknown_checksum(cluster: Cluster, workdir: Path,
                                         recording_file: tuple[Path, bytes]) -> None:
    proc = cli(cluster, workdir, "upload", str(recording_file[0]), "--checksum", "crc32",
               ok=False)
    assert proc.returncode == 2 and "--checksum" in proc.stderr


def test_cli_errors_are_clean(cluster: Cluster, workdir: Path) -> None:
    proc = cli(cluster, workdir, "show", "not-an-id", ok=False)
    assert proc.returncode != 0
    proc = cli(cluster, workdir, "show", "0" * 26, ok=False)
    assert proc.returncode == 1 and "session_not_found" in proc.stderr
