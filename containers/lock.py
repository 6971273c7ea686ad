"""Write the images' hash-pinned lock files, `sessions/<service>/requirements.txt`.

Resolves `[project].dependencies` of pyproject.toml for CPython 3.13 on Linux x86_64 and
aarch64 (binary wheels only, glibc up to Debian 13's 2.41) with `pip download`, checks
both architectures resolve to the same versions, and writes one requirement per package
with the sha256 of every wheel it needs, each wheel named in a comment under it (the
tests check those names without network).  All three services import `sessions.core`
(cryptography, zstandard) and `sessions.common` (FastAPI, httpx, prometheus-client), so
the three lock files pin the same set.

    python containers/lock.py            # what `make lock` runs (needs PyPI)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("processor", "storage", "api")
PYTHON = "3.13"
ARCHES = ("x86_64", "aarch64")
GLIBC_MAX = 41  # Debian 13 (trixie) has glibc 2.41


def platforms(arch: str) -> list[str]:
    """Return the manylinux tags a trixie runtime accepts on arch, newest first."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MAX, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def download(requirements: list[str], arch: str, dest: Path) -> dict[str, Path]:
    """Download the resolved wheels for arch into dest; return them by canonical name."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON,
           "--dest", str(dest)]
    for tag in platforms(arch):
        cmd += ["--platform", tag]
    subprocess.run([*cmd, *requirements], check=True)  # noqa: S603 - fixed argv
    return {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in dest.glob("*.whl")}


def render(service: str, requirements: list[str], wheels: dict[str, list[Path]]) -> str:
    """Return the lock file text of one service."""
    lines = [f"# Lock file of the {service} image: `make lock` writes it (containers/lock.py).",
             f"# From pyproject.toml [project].dependencies: {'; '.join(requirements)}",
             f"# CPython {PYTHON}, linux x86_64 and aarch64, binary wheels only.", ""]
    for name in sorted(wheels):
        files = sorted(set(wheels[name]), key=lambda p: p.name)
        version = parse_wheel_filename(files[0].name)[1]
        digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        hashes = sorted(set(digests.values()))
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "")
                  for i, h in enumerate(hashes)]
        lines += [f"    # wheel {fname} sha256:{digest}" for fname, digest in digests.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]
    wheels: dict[str, list[Path]] = {}
    pins: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHES:
            found = download(requirements, arch, Path(tmp) / arch)
            pins[arch] = {n: str(parse_wheel_filename(p.name)[1]) for n, p in found.items()}
            for name, path in found.items():
                wheels.setdefault(name, []).append(path)
        if pins["x86_64"] != pins["aarch64"]:
            print(f"lock: the architectures resolve differently: {pins}", file=sys.stderr)
            return 1
        for service in SERVICES:
            out = ROOT / "sessions" / service / "requirements.txt"
            out.write_text(render(service, requirements, wheels))
            print(f"lock: wrote {out.relative_to(ROOT)} ({len(wheels)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
