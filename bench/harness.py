"""What the end-to-end benchmark runs: the inputs, our services (the launcher's Node), rivals.

* inputs: three deterministic profiles written once to a file (`write_input`);
* ours: the three services of sessions/client/launcher.py on free loopback ports,
  a fresh data dir per run (with `--chunk-store s3`, a fresh prefix of the S3 server's
  bucket for storage's chunks), driven along two paths: **raw** (buffered PATCHes as
  curl sends, one GET hashed as read, a full verify; bench/client.py) and **cli** (the
  `lucid-sessions upload` and `replay -o FILE` commands, as a user runs them);
* rivals: restic and borg on the same file (bench/rivals.py);
* `run_round`: every system on every profile once, in an order rotated by round.

Results are the typed dataclasses of bench/measure.py.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx

from bench import core
from bench.client import ClientError, patch_file, replay_sha256
from bench.measure import (
    MiB,
    OursRun,
    PathRun,
    ProfileRound,
    Replayed,
    RoundResult,
    SessionFacts,
    Stopwatch,
    Verified,
    run_reference,
)
from bench.procstats import dir_bytes, peak_rss_bytes
from bench.rivals import RIVALS, file_sha256
from sessions.client.launcher import REPO, SERVICES, Node

HTTP_TIMEOUT_S = 900.0
HTTP_TIMEOUT = httpx.Timeout(HTTP_TIMEOUT_S, connect=10.0)
NODE_NAME = "lucid-bench"
SESSION_ID = re.compile(r"\b[0-7][0-9A-HJKMNP-TV-Z]{25}\b")

T = TypeVar("T")
P = ParamSpec("P")


class BenchError(RuntimeError):
    """A round failed: a service did not start, a call failed, a hash differed."""


@dataclass(frozen=True)
class Plan:
    """What to run: the command line of bench.e2e, checked."""

    size_mib: int
    profiles: list[str]
    paths: list[str]
    store: str  # "sqlite" or "mongo"
    rounds: int
    request_mib: int
    chunk_bytes: int
    zstd_level: int
    service_env: dict[str, str]
    ref_mib: int
    wanted_rivals: list[str]
    keep: bool
    chunk_store: str = "local"  # "local" (storage's data dir) or "s3" (SeaweedFS)

    @property
    def size(self) -> int:
        return self.size_mib * MiB

    @property
    def request_bytes(self) -> int:
        return self.request_mib * MiB


@dataclass(frozen=True)
class MetadataServer:
    """The SecantusDB server of `--store mongo`: its URL, and its pid for the CPU figures
    (None: an external server, LUCID_TEST_MONGODB_URL, whose CPU is not ours to read)."""

    url: str
    pid: int | None


@dataclass(frozen=True)
class ChunkStoreServer:
    """The S3 server of `--chunk-store s3`: its pid for the CPU figures, the storage settings
    of a prefix (`env_of`), and `sweep`, which returns the bytes of a prefix's objects and
    removes them."""

    pid: int
    env_of: Callable[[str], dict[str, str]]
    sweep: Callable[[str], int]


# --- input -----------------------------------------------------------------------------------


def iter_input(total: int, *, seed: int = core.SEED) -> Iterator[bytes]:
    """Yield, piece by piece, exactly the bytes of bench.core.make_input(total, seed=seed).

    Same PRNGs, same order (a frame, then as many random bytes), without holding
    more than one frame in memory.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    noise = random.Random(seed + 1)  # noqa: S311
    frame, n, left = core._base_frame(rng), 0, total
    while left > 0:
        for piece in (bytes(frame), noise.randbytes(len(frame))):
            piece = piece[:left]
            left -= len(piece)
            yield piece
            if left == 0:
                return
        n += 1
        core._next_frame(frame, rng, n)


def iter_static(total: int, *, seed: int = core.SEED) -> Iterator[bytes]:
    """Yield `total` bytes of a mostly static desktop: one frame repeated, a cursor moving
    on every frame and a line typed on every eighth."""
    rng = random.Random(seed + 2)  # noqa: S311 - reproducible test data, not secrets
    frame, n, left = core._base_frame(rng), 0, total
    while left > 0:
        piece = bytes(frame[:left])
        left -= len(piece)
        yield piece
        n += 1
        cx, cy = rng.randrange(core.WIDTH - 16), rng.randrange(core.HEIGHT - 16)
        core._fill_rect(frame, cx, cy, core._flat(b"\x00\x00\x00\xff", 12, 16))
        if n % 8 == 0:
            core._fill_rect(frame, 90, 100 + (n * 2) % 432,
                            core._text_rows(rng, 680, 16, core.INK, core.PAPER))


def iter_random(total: int, *, seed: int = core.SEED) -> Iterator[bytes]:
    """Yield `total` incompressible bytes (as an already encoded video stream is)."""
    rng = random.Random(seed + 3)  # noqa: S311 - reproducible test data, not secrets
    left = total
    while left > 0:
        piece = rng.randbytes(min(MiB, left))
        left -= len(piece)
        yield piece


PROFILES: dict[str, Callable[[int], Iterator[bytes]]] = {
    "mixed": iter_input, "static": iter_static, "random": iter_random}


def write_input(path: Path, total: int, profile: str = "mixed") -> str:
    """Write the input file (or reuse one with a matching sidecar); return its hex SHA-256."""
    tag = path.with_suffix(".sha256")
    key = f"{total} {core.SEED} {profile}"
    if path.exists() and tag.exists() and path.stat().st_size == total:
        size_seed, _, digest = tag.read_text(encoding="utf-8").strip().rpartition(" ")
        if size_seed == key:
            return digest
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for piece in PROFILES[profile](total):
            h.update(piece)
            f.write(piece)
    digest = h.hexdigest()
    tag.write_text(f"{key} {digest}\n", encoding="utf-8")
    return digest


# --- our three services ----------------------------------------------------------------------


def _token(node: Node) -> str:
    return (node.data_dir / "secrets" / "admin.token").read_text(encoding="utf-8").strip()


def _bulk(step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one of bench/client.py's bulk steps; its failures fail the round."""
    try:
        return step(*args, **kwargs)
    except (ClientError, OSError) as exc:
        raise BenchError(f"{getattr(step, '__name__', step)}: {exc}") from exc


def _expect(r: httpx.Response, status: int, what: str) -> Any:
    """Return the JSON body of a response of the expected status (the gateway's wire shape)."""
    if r.status_code != status:
        raise BenchError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json() if r.content and "json" in r.headers.get("content-type", "") else None


def _raw_path(node: Node, watch: Stopwatch, input_path: Path, size: int, sha: str, *,
              request_bytes: int, chunk_size: int) -> PathRun:
    """The raw streaming path: buffered PATCHes, one GET hashed as read, a full verify."""
    base, token = node.url("api") + "/v1", _token(node)
    with httpx.Client(base_url=base, trust_env=False, timeout=HTTP_TIMEOUT,
                      headers={"Authorization": f"Bearer {token}"}) as api:

        def ingest() -> tuple[str, int, Any]:
            sid: str = _expect(api.post("/sessions", json={"labels": {"bench": "e2e"}}), 201,
                               "create session")["id"]
            status = _expect(api.get(f"/sessions/{sid}/upload"), 200, "upload status")
            if status["chunk_size"] != chunk_size:
                raise BenchError(f"processor chunk size {status['chunk_size']} != {chunk_size}")
            offset, requests = 0, 0
            while offset < size:
                length = min(request_bytes, size - offset)
                body = _bulk(patch_file, base, token, sid, input_path, offset=offset,
                             length=length, timeout=HTTP_TIMEOUT_S)
                offset += length
                requests += 1
                if body["offset"] != offset:
                    raise BenchError(f"PATCH committed up to {body['offset']}, sent {offset}")
            return sid, requests, _expect(api.post(f"/sessions/{sid}/finalize"), 200,
                                          "finalize")

        (sid, requests, session), ingested = watch.time(ingest)
        node.check_alive()
        if session["state"] != "completed" or session["offset"] != size:
            raise BenchError(f"finalize answered {session}")
        facts = SessionFacts(sid, session["chunk_count"], session["sealed_bytes"], requests)
        (got, replay_sha), replayed = watch.time(
            lambda: _bulk(replay_sha256, base, token, sid, timeout=HTTP_TIMEOUT_S))
        back = Replayed(got, replay_sha, replay_sha == sha and got == size)
        if not back.sha256_ok:
            raise BenchError(f"REPLAY MISMATCH: {got} bytes, sha256 {replay_sha}, "
                             f"input {size} bytes, sha256 {sha}")
        report, verified = watch.time(lambda: _expect(api.post(f"/sessions/{sid}/verify"), 200,
                                                      "verify"))
        check = Verified(bool(report.get("ok")), report.get("checked"), report.get("bad_chunks"))
        if not (check.ok and check.checked == facts.chunk_count):
            raise BenchError(f"VERIFY FAILED: {report}")
    return PathRun(ingested, replayed, back, verified, check, facts)


def _cli(node: Node, *args: str) -> str:
    """Run `python -m sessions.client ARGS` as a user would (token from a file); return stdout."""
    root = node.data_dir.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": node.url("api"), "XDG_CACHE_HOME": str(root / "cli-cache"),
            "LUCID_TOKEN_FILE": str(node.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run([sys.executable, "-m", "sessions.client", *args],  # noqa: S603
                          env=env, cwd=root, capture_output=True, text=True,
                          timeout=HTTP_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise BenchError(f"lucid-sessions {args[0]} exited {proc.returncode}: "
                         f"{(proc.stdout + proc.stderr)[-800:]}")
    return proc.stdout + proc.stderr


def _cli_path(node: Node, watch: Stopwatch, input_path: Path, size: int, sha: str, *,
              request_bytes: int) -> PathRun:
    """The CLI's path: `lucid-sessions upload` and `lucid-sessions replay -o FILE`."""
    said, ingested = watch.time(lambda: _cli(node, "upload", str(input_path), "--request-mib",
                                             str(max(1, request_bytes // MiB))))
    node.check_alive()
    found = SESSION_ID.search(said)
    if found is None:
        raise BenchError(f"no session id in the CLI's output: {said[-400:]}")
    target = node.data_dir.parent / "replayed.bin"
    _, replayed = watch.time(lambda: _cli(node, "replay", found.group(0), "-o", str(target)))
    got, replay_sha = target.stat().st_size, file_sha256(target)
    target.unlink()
    back = Replayed(got, replay_sha, replay_sha == sha and got == size)
    if not back.sha256_ok:
        raise BenchError(f"CLI REPLAY MISMATCH: {got} bytes, sha256 {replay_sha}")
    return PathRun(ingested, replayed, back)


def run_ours(root: Path, input_path: Path, size: int, sha: str, *, request_bytes: int,
             chunk_size: int, extra_env: dict[str, str], paths: Sequence[str] = ("raw",),
             extra_pids: dict[str, int] | None = None,
             chunk_server: ChunkStoreServer | None = None) -> OursRun:
    """One round of ours on one input: start, each path in turn, stop; return the measurements.

    With `chunk_server`, storage keeps its chunks under a fresh prefix of that S3 server;
    the prefix's objects count as stored bytes and are removed at the end.
    """
    node = Node.in_dir(root, die_with_parent=True, base_env={
        "LUCID_LOG_LEVEL": "warning", "LUCID_NODE_NAME": NODE_NAME, **extra_env})
    prefix = f"bench/{uuid.uuid4().hex[:12]}"
    if chunk_server is not None:
        node.extra_env["storage"] = chunk_server.env_of(prefix)
    out = OursRun(ports={name: port for name, port in node.ports.items()})
    try:
        node.start_all()
        pids: dict[str, int] = {name: pid for name, pid in node.pids().items()}
        watch = Stopwatch({**pids, **(extra_pids or {})})
        for path in paths:
            if path == "raw":
                out.paths["raw"] = _raw_path(node, watch, input_path, size, sha,
                                             request_bytes=request_bytes, chunk_size=chunk_size)
            else:
                out.paths["cli"] = _cli_path(node, watch, input_path, size, sha,
                                             request_bytes=request_bytes)
        out.peak_rss_end = {n: peak_rss_bytes(p) for n, p in {**pids, **(extra_pids or {})}.items()}
        node.check_alive()
    except BaseException as exc:
        for n in SERVICES:
            if tail := node.log_tail(n):
                exc.add_note(f"--- last lines of {n}.log ---\n{tail}")
        raise
    finally:
        node.stop()
    storage = node.data_dir / "storage"
    out.stored_bytes = dir_bytes(storage)
    out.chunk_file_bytes = dir_bytes(storage, suffixes=(".lcs",))
    if chunk_server is not None:
        out.chunk_file_bytes = chunk_server.sweep(prefix)
        out.stored_bytes += out.chunk_file_bytes
    out.other_stored_bytes = out.stored_bytes - out.chunk_file_bytes
    out.log_tracebacks = [n for n in SERVICES if "Traceback" in node.log_tail(n, 1 << 30)]
    return out


# --- rounds ------------------------------------------------------------------------------------


def loud(msg: str) -> None:
    """Print a message between two bars of '!', so it is not missed in the run's output."""
    bar = "!" * 78
    print(f"\n{bar}\n{msg}\n{bar}", flush=True)


def _rotated(items: Sequence[str], k: int) -> list[str]:
    shift = (k - 1) % len(items)
    return [*items[shift:], *items[:shift]]


def run_round(k: int, plan: Plan, work: Path, inputs: dict[str, tuple[Path, str]],
              rivals: Sequence[str], ref_data: bytes,
              mongo: MetadataServer | None = None,
              chunk_server: ChunkStoreServer | None = None) -> RoundResult:
    """Run every system on every profile once, in orders rotated by round; return the results."""
    rdir = work / f"round-{k}"
    rdir.mkdir()
    order = _rotated(["ours", *rivals], k)
    result = RoundResult(round=k, order=order, path_order=_rotated(plan.paths, k))
    for profile, (input_path, sha) in inputs.items():
        got = result.profiles[profile] = ProfileRound()
        for system in order:
            print(f"round {k}: {profile}: {system} ...", flush=True)
            # What the previous system wrote is flushed now, not while the next one is timed.
            os.sync()
            t0 = time.perf_counter()
            where = rdir / f"{profile}-{system}"
            try:
                if system == "ours":
                    env = dict(plan.service_env)
                    extra_pids: dict[str, int] = {}
                    if mongo is not None:
                        env["LUCID_METADATA_URL"] = mongo.url
                        if mongo.pid is not None:
                            extra_pids["mongo"] = mongo.pid
                    if chunk_server is not None:
                        extra_pids["seaweedfs"] = chunk_server.pid
                    got.ours = run_ours(where, input_path, plan.size, sha,
                                        request_bytes=plan.request_bytes,
                                        chunk_size=plan.chunk_bytes, extra_env=env,
                                        paths=result.path_order, extra_pids=extra_pids,
                                        chunk_server=chunk_server)
                    if got.ours.log_tracebacks:
                        loud(f"round {k}: traceback in the log of "
                             f"{', '.join(got.ours.log_tracebacks)} (see {where})")
                else:
                    got.rivals[system] = RIVALS[system].run(input_path, where, sha)
            except Exception as exc:  # a failed system fails the round; the others still run
                result.ok = False
                result.errors.append(f"{profile} {system}: {exc}")
                loud(f"ROUND {k} FAILED in {profile} {system}: {exc}\n"
                     f"{traceback.format_exc()}")
            finally:
                if not plan.keep:
                    shutil.rmtree(where, ignore_errors=True)
            print(f"round {k}: {profile}: {system} done in {time.perf_counter() - t0:.1f}s",
                  flush=True)
    if ref_data:
        try:
            result.reference = run_reference(ref_data, chunk_size=plan.chunk_bytes,
                                             zstd_level=plan.zstd_level)
        except Exception as exc:
            result.ok = False
            result.errors.append(f"reference: {exc}")
            loud(f"ROUND {k} FAILED in the reference: {exc}\n{traceback.format_exc()}")
    if not plan.keep:
        shutil.rmtree(rdir, ignore_errors=True)
    return result


def compile_package() -> None:
    """Write the bytecode of this checkout's `sessions` package, as installing one does.

    An editable checkout run under PYTHONDONTWRITEBYTECODE (some environments set it,
    this machine's included) otherwise compiles every module a command imports on each
    `lucid-sessions` run, ~20 ms that no installed copy pays."""
    compileall.compile_dir(REPO / "sessions", quiet=1)


def cli_startup() -> float:
    """Return the wall seconds of `python -m sessions.client --help` (best of three)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sessions.client", "--help"],  # noqa: S603
                       capture_output=True, check=True, timeout=60)
        best = min(best, time.perf_counter() - t0)
    return best
