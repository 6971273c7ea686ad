"""Tokens with roles end to end: the `token` CLI, a recorder that cannot read, an auditor
that audits with its token alone, revocation, and logs that name token ids, never tokens."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import ID_RE, MIB, session_bytes

pytestmark = pytest.mark.e2e
TIMEOUT = 60
TOKEN_RE = re.compile(r"lucid_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


def cli(cluster: Cluster, workdir: Path, token_file: Path, *args: str
        ) -> subprocess.CompletedProcess[str]:
    """Run `python -m sessions.client ARGS` with the token in token_file."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": cluster.url("api"), "XDG_CACHE_HOME": str(workdir / "cache"),
            "LUCID_TOKEN_FILE": str(token_file)}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.client", *args], cwd=workdir, env=env, text=True,
        capture_output=True, timeout=TIMEOUT, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def test_roles_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    admin = cluster.data_dir / "secrets" / "admin.token"
    files: dict[str, Path] = {}
    ids: dict[str, str] = {}
    for role in ("recorder", "auditor"):
        made = cli(cluster, tmp_path, admin, "token", "create", "--role", role, "--name",
                   f"e2e-{role}", "--expires-in", "1d")
        assert made.returncode == 0, made.stderr
        match = TOKEN_RE.fullmatch(made.stdout.strip())  # the token, alone on stdout, once
        assert match is not None, made.stdout
        files[role] = tmp_path / f"{role}.token"
        files[role].write_text(made.stdout.strip() + "\n")
        ids[role] = match.group(1)

    listed = cli(cluster, tmp_path, admin, "token", "ls")
    assert listed.returncode == 0 and ids["recorder"] in listed.stdout
    assert "lucid_" not in listed.stdout, "token ls shows a secret"

    # The recorder uploads and finalizes its own session, and can do nothing that reads.
    data = session_bytes(2 * MIB + 77, seed=1414)
    (tmp_path / "rec.bin").write_bytes(data)
    up = cli(cluster, tmp_path, files["recorder"], "upload", str(tmp_path / "rec.bin"))
    assert up.returncode == 0, up.stderr
    sid = up.stdout.strip().splitlines()[-1]
    assert ID_RE.fullmatch(sid)
    for args in (("ls",), ("show", sid), ("rm", sid),
                 ("replay", sid, "-o", str(tmp_path / "out.bin"))):
        refused = cli(cluster, tmp_path, files["recorder"], *args)
        assert refused.returncode == 1 and "forbidden" in refused.stderr, args
    assert not (tmp_path / "out.bin").exists() or (tmp_path / "out.bin").read_bytes() == b""

    # The auditor verifies offline and checks an inclusion proof with its token alone.
    verified = cli(cluster, tmp_path, files["auditor"], "verify", sid)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    proof = cli(cluster, tmp_path, files["auditor"], "proof", sid, "1")
    assert proof.returncode == 0, proof.stdout + proof.stderr
    replay = cli(cluster, tmp_path, files["auditor"], "replay", sid, "-o",
                 str(tmp_path / "aud.bin"))
    assert replay.returncode == 1 and "forbidden" in replay.stderr

    # Revoked through this gateway: refused at once.
    revoked = cli(cluster, tmp_path, admin, "token", "revoke", ids["recorder"])
    assert revoked.returncode == 0, revoked.stderr
    again = cli(cluster, tmp_path, files["recorder"], "upload", str(tmp_path / "rec.bin"))
    assert again.returncode == 1 and "unauthorized" in again.stderr

    # Every request is logged with its token id; no token (nor its secret) is logged.
    api_log = cluster.log_text("api")
    assert re.search(rf"token={ids['auditor']} GET /v1/sessions/{sid}/manifest 200", api_log)
    assert re.search(rf"token={ids['recorder']} PATCH /v1/sessions/{sid}/upload 200", api_log)
    for name in ("api", "processor", "storage"):
        text = cluster.log_text(name)
        for path in files.values():
            token = path.read_text().strip()
            assert token not in text and token.rsplit("_", 1)[-1] not in text, name
