"""The rivals of the end-to-end benchmark: restic and borg on the same input file.

Each run uses a fresh repository under its own work directory, the same input file
(already in the page cache, as it is for our run: nothing is dropped), and measures:

* wall seconds of the backup (`restic backup`, `borg create`) and of the restore
  (`restic restore`, `borg extract`), not counting `init`;
* their CPU seconds (user + system of the child, from `getrusage(RUSAGE_CHILDREN)`);
* the repository size (apparent bytes of its files) after the backup;
* the restored file's SHA-256 against the input's (computed untimed, after the restore).

restic: repository format v2, `--compression auto`, password from a file.
borg:   `init --encryption repokey`, `create --compression zstd,3`, `BORG_PASSPHRASE`.

Both are Debian packages (`make bench-deps` installs them when missing, as root).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procstats import dir_bytes

TIMEOUT = 3 * 3600.0  # one backup or restore of the biggest input on a slow machine
PASSWORD = "lucid-bench-not-a-secret"  # noqa: S105 - throwaway repositories of test data
INSTALL_HINT = ("install it with `make bench-deps` (as root) or "
                "`sudo apt-get update && sudo apt-get install -y restic borgbackup`")


class RivalError(RuntimeError):
    """A rival command failed or restored something else than the input."""


@dataclass
class RivalRun:
    name: str
    backup_s: float
    restore_s: float
    backup_cpu_s: float
    restore_cpu_s: float
    repo_bytes: int
    sha256_ok: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path, piece: int = 4 << 20) -> str:
    """Return the hex SHA-256 of a file, read in `piece`-byte reads."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while data := f.read(piece):
            h.update(data)
    return h.hexdigest()


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_timed(argv: list[str], *, env: dict[str, str], log: Path,
              cwd: Path | None = None) -> tuple[float, float]:
    """Run argv to completion, output appended to `log`; return (wall s, CPU s of the child)."""
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        cpu0, t0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,  # noqa: S603
                              stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT, check=False)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        raise RivalError(f"{argv[0]} {argv[1]} exited with {proc.returncode}:\n"
                         + "\n".join(tail))
    return wall, cpu


def _clean_env(drop_prefix: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefix)}


class Rival:
    """One rival tool: its binary, how to back up and restore one file."""

    name = ""
    binary = ""
    package = ""  # the Debian package
    version_args: tuple[str, ...] = ("--version",)

    def path(self) -> str | None:
        return shutil.which(self.binary)

    def available(self) -> bool:
        return self.path() is not None

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, *self.version_args],  # noqa: S603
                                 capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

    def run(self, input_path: Path, work: Path, expected_sha256: str) -> RivalRun:
        raise NotImplementedError


def _restored(target: Path, input_path: Path) -> Path:
    """Both tools restore a file under its absolute path, less the leading '/'."""
    return target / str(input_path.resolve()).lstrip("/")


class Restic(Rival):
    name, binary, package = "restic", "restic", "restic"
    version_args = ("version",)

    def run(self, input_path: Path, work: Path, expected_sha256: str) -> RivalRun:
        work.mkdir(parents=True, exist_ok=True)
        repo, target, log = work / "repo", work / "restore", work / "restic.log"
        pw = work / "password"
        pw.write_text(PASSWORD + "\n", encoding="utf-8")
        env = _clean_env("RESTIC_")
        env.update({"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(pw),
                    "RESTIC_CACHE_DIR": str(work / "cache")})
        run_timed(["restic", "init", "--repository-version", "2"], env=env, log=log)
        backup_s, backup_cpu = run_timed(
            ["restic", "backup", "--compression", "auto", str(input_path.resolve())],
            env=env, log=log)
        repo_bytes = dir_bytes(repo)
        restore_s, restore_cpu = run_timed(
            ["restic", "restore", "latest", "--target", str(target)], env=env, log=log)
        ok = file_sha256(_restored(target, input_path)) == expected_sha256
        if not ok:
            raise RivalError("restic restored a file whose SHA-256 differs from the input's")
        return RivalRun(self.name, backup_s, restore_s, backup_cpu, restore_cpu, repo_bytes, ok)


class Borg(Rival):
    name, binary, package = "borg", "borg", "borgbackup"

    def run(self, input_path: Path, work: Path, expected_sha256: str) -> RivalRun:
        work.mkdir(parents=True, exist_ok=True)
        repo, target, log = work / "repo", work / "restore", work / "borg.log"
        target.mkdir()
        env = _clean_env("BORG_")
        env.update({"BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "base"),
                    "BORG_DISPLAY_PASSPHRASE": "no"})
        run_timed(["borg", "init", "--encryption", "repokey", str(repo)], env=env, log=log)
        backup_s, backup_cpu = run_timed(
            ["borg", "create", "--compression", "zstd,3", f"{repo}::a",
             str(input_path.resolve())], env=env, log=log)
        repo_bytes = dir_bytes(repo)
        restore_s, restore_cpu = run_timed(["borg", "extract", f"{repo}::a"], env=env, log=log,
                                           cwd=target)
        ok = file_sha256(_restored(target, input_path)) == expected_sha256
        if not ok:
            raise RivalError("borg extracted a file whose SHA-256 differs from the input's")
        return RivalRun(self.name, backup_s, restore_s, backup_cpu, restore_cpu, repo_bytes, ok)


RIVALS: dict[str, Rival] = {"restic": Restic(), "borg": Borg()}
