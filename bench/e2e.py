"""End-to-end benchmark: the three services on loopback against restic and borg.

    python -m bench.e2e [--size-mib N] [--rounds R] [--profiles mixed,static,random]
                        [--paths raw,cli] [--store sqlite|mongo] [--request-mib M]
                        [--json PATH] [--chunk-size B] [--inflight N] [--prefetch N]
                        [--zstd-level L] [--env LUCID_X=V ...] [--no-rivals] [--workdir DIR]
                        [--keep]

Inputs (`--profiles`), each deterministic, written once to a file in the work dir:

* **mixed**: bench/core.py's session-like stream (screen frames alternating with
  incompressible blocks of the same size);
* **static**: a mostly static desktop: the same frame again and again, a cursor moving
  and a line typed now and then (restic's and borg's deduplication find the repeats);
* **random**: incompressible bytes throughout (an already encoded video stream).

Each round, for each profile, in an order rotated from round to round:

* **ours**: storage, processor and gateway as three processes (`python -m sessions.client
  serve <svc>`) on free loopback ports, a fresh data dir (`--store sqlite`: the embedded
  store; `--store mongo`: a SecantusDB server, tests/mongo_server.py), `LUCID_LOG_LEVEL=
  warning`, the default chunk size unless `--chunk-size`.  Two paths (`--paths`), each its
  own session, their order rotated too:
  - **raw**: create a session, PATCH the file in `--request-mib` requests, each body sent
    with sendfile(2) (no Upload-Checksum; bench/client.py), finalize; replay with one GET
    read into one reused buffer and SHA-256; verify (100 %).
  - **cli**: `lucid-sessions upload FILE` as a user runs it (a subprocess; it creates,
    sends with `Upload-Checksum` in `--request-mib` requests and finalizes), then
    `lucid-sessions replay ID -o FILE` (written and fsync'd); the file's SHA-256 is
    compared afterwards, untimed.
  Per step: CPU seconds (utime + stime, /proc/<pid>/stat) of each service (and of the
  SecantusDB server with `--store mongo`) and of the client; each service's peak RSS
  (VmHWM) at the end; stored bytes.
* **restic** (repo v2, --compression auto) and **borg** (repokey, zstd,3): backup and
  restore of the same file, fresh repository (see bench/rivals.py).
* **reference**: bench/core.py's single-core primitives (zstd at our level,
  AES-256-GCM, SHA-256) and its one-core pipeline on a slice of the mixed input.

Reported: medians over the rounds. MB/s = 10^6 bytes of *input* per wall second;
CPU s/GB = CPU seconds per 10^9 bytes of input; MB of RSS = 10^6 bytes. Ratios
ours/rival are medians of the per-round ratios (both sides measured in the same
round, so a noisy neighbour hits both alike).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import core
from bench.client import ClientError, patch_file, replay_sha256
from bench.procstats import cpu_seconds, dir_bytes, peak_rss_bytes
from bench.rivals import INSTALL_HINT, RIVALS, file_sha256
from sessions.client import launcher
from sessions.client.launcher import SERVICES
from sessions.core import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL
from sessions.core._sealing import ChunkSealer

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
MB = 1_000_000
GB = 1_000_000_000
START_TIMEOUT = 30.0
HTTP_TIMEOUT_S = 900.0
HTTP_TIMEOUT = httpx.Timeout(HTTP_TIMEOUT_S, connect=10.0)
UPLOAD_TYPE = "application/offset+octet-stream"
NODE_NAME = "lucid-bench"

# targets (issue #16)
INGEST_RATIO, REPLAY_RATIO, FLOOR_RATIO = 1.5, 2.0, 1.0  # ours / restic
INGEST_STRETCH, REPLAY_STRETCH = 2.0, 2.5
CPU_INGEST, CPU_REPLAY = 4.0, 2.5  # CPU s/GB over the three services, the CLI's path
HARD_PROFILES = ("mixed", "static")
RSS_LIMIT_MB = {"storage": 100.0, "processor": 150.0, "api": 100.0}
PI_CORES, PI_SLOWDOWN = 4, 3.0  # a Pi 5: 4 cores at ~1/3 of this machine's per-core speed
GIGABIT_MBPS = 117.0  # what a gigabit NIC carries in payload
PI_TARGET = 2 * GIGABIT_MBPS


class BenchError(RuntimeError):
    """A round failed: a service did not start, a call failed, a hash differed."""


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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the service if the benchmark dies without stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Services:
    """The three service processes of one round, sharing a fresh data dir."""

    def __init__(self, root: Path, extra_env: dict[str, str]) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.log_dir = root / "logs"
        self.data_dir.mkdir(parents=True)
        self.log_dir.mkdir(parents=True)
        self.ports = {name: launcher.free_port() for name in SERVICES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = launcher.service_env(data_dir=self.data_dir, ports=self.ports, extra={
            "LUCID_LOG_LEVEL": "warning", "LUCID_NODE_NAME": NODE_NAME, **extra_env})

    def url(self, name: str) -> str:
        return launcher.url(self.ports[name])

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return launcher.log_tail(self.log_path(name), lines)

    def start(self) -> None:
        """Start storage, then the processor, then the gateway; wait until the chain is ready."""
        for name in SERVICES:
            self.procs[name] = launcher.spawn(
                name, env=self.env, log=self.log_path(name),
                preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads run at this point
            launcher.wait_ok(name, self.procs[name], self.url(name) + "/health",
                             timeout=START_TIMEOUT, log=self.log_path(name))
        launcher.wait_ok("api", self.procs["api"], self.url("api") + "/ready",
                         timeout=START_TIMEOUT, log=self.log_path("api"))

    def stop(self) -> None:
        """Terminate every service (gateway first), killing any that does not exit in 10 s."""
        launcher.stop_all(self.procs)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} died with {proc.returncode}:\n" + self.log_tail(name))

    def token(self) -> str:
        return (self.data_dir / "secrets" / "admin.token").read_text(encoding="utf-8").strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url("api") + "/v1", trust_env=False,
                            headers={"Authorization": f"Bearer {self.token()}"},
                            timeout=HTTP_TIMEOUT)

    def log_tracebacks(self) -> list[str]:
        """Return the services whose log holds a traceback."""
        return [n for n in SERVICES if self.log_path(n).exists()
                and "Traceback" in self.log_path(n).read_text(encoding="utf-8", errors="replace")]


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["client"] = time.process_time() + _children_cpu()
    return snap


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    d["services"] = sum(d[name] for name in SERVICES) + d.get("mongo", 0.0)
    return d


def _bulk(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one of bench/client.py's bulk steps; its failures fail the round."""
    try:
        return step(*args, **kwargs)
    except (ClientError, OSError) as exc:
        raise BenchError(f"{step.__name__}: {exc}") from exc


def _expect(r: httpx.Response, status: int, what: str) -> Any:
    if r.status_code != status:
        raise BenchError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json() if r.content and "json" in r.headers.get("content-type", "") else None


class _Timed:
    """Wall time and CPU deltas (services, client) around one step."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    @contextlib.contextmanager
    def step(self, into: dict[str, Any]) -> Iterator[None]:
        before, t0 = _cpu_snapshot(self.pids), time.perf_counter()
        yield
        into["wall_s"] = time.perf_counter() - t0
        into["cpu_s"] = _cpu_delta(before, _cpu_snapshot(self.pids))


def _raw_path(svc: Services, timed: _Timed, input_path: Path, size: int, sha: str, *,
              request_bytes: int, chunk_size: int) -> dict[str, Any]:
    """The raw streaming path: sendfile PATCHes, one GET hashed as read, a full verify."""
    out: dict[str, Any] = {"ingest": {}, "replay": {}, "verify": {}}
    base, token = svc.url("api") + "/v1", svc.token()
    with svc.client() as api:
        with timed.step(out["ingest"]):
            sid = _expect(api.post("/sessions", json={"labels": {"bench": "e2e"}}), 201,
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
            session = _expect(api.post(f"/sessions/{sid}/finalize"), 200, "finalize")
        svc.check_alive()
        if session["state"] != "completed" or session["offset"] != size:
            raise BenchError(f"finalize answered {session}")
        out["session"] = {"id": sid, "chunk_count": session["chunk_count"],
                          "sealed_bytes": session["sealed_bytes"], "requests": requests}
        with timed.step(out["replay"]):
            got, replay_sha = _bulk(replay_sha256, base, token, sid, timeout=HTTP_TIMEOUT_S)
        out["replay"].update({"bytes": got, "sha256": replay_sha,
                              "sha256_ok": replay_sha == sha and got == size})
        if not out["replay"]["sha256_ok"]:
            raise BenchError(f"REPLAY MISMATCH: {got} bytes, sha256 {replay_sha}, "
                             f"input {size} bytes, sha256 {sha}")
        with timed.step(out["verify"]):
            report = _expect(api.post(f"/sessions/{sid}/verify"), 200, "verify")
        out["verify"].update({"ok": bool(report.get("ok")), "checked": report.get("checked"),
                              "bad_chunks": report.get("bad_chunks")})
        if not (report.get("ok") and report.get("checked") == session["chunk_count"]):
            raise BenchError(f"VERIFY FAILED: {report}")
    return out


def _cli(svc: Services, *args: str) -> str:
    """Run `python -m sessions.client ARGS` as a user would (token from a file); return stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": svc.url("api"), "XDG_CACHE_HOME": str(svc.root / "cli-cache"),
            "LUCID_TOKEN_FILE": str(svc.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run([sys.executable, "-m", "sessions.client", *args],  # noqa: S603
                          env=env, cwd=svc.root, capture_output=True, text=True,
                          timeout=HTTP_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise BenchError(f"lucid-sessions {args[0]} exited {proc.returncode}: "
                         f"{(proc.stdout + proc.stderr)[-800:]}")
    return proc.stdout + proc.stderr


def _cli_path(svc: Services, timed: _Timed, input_path: Path, size: int, sha: str, *,
              request_bytes: int) -> dict[str, Any]:
    """The CLI's path: `lucid-sessions upload` and `lucid-sessions replay -o FILE`."""
    out: dict[str, Any] = {"ingest": {}, "replay": {}}
    with timed.step(out["ingest"]):
        said = _cli(svc, "upload", str(input_path), "--request-mib",
                    str(max(1, request_bytes // MiB)))
    svc.check_alive()
    found = re.search(r"\b[0-7][0-9A-HJKMNP-TV-Z]{25}\b", said)
    if found is None:
        raise BenchError(f"no session id in the CLI's output: {said[-400:]}")
    target = svc.root / "replayed.bin"
    with timed.step(out["replay"]):
        _cli(svc, "replay", found.group(0), "-o", str(target))
    got, replay_sha = target.stat().st_size, file_sha256(target)
    target.unlink()
    out["replay"].update({"bytes": got, "sha256": replay_sha,
                          "sha256_ok": replay_sha == sha and got == size})
    if not out["replay"]["sha256_ok"]:
        raise BenchError(f"CLI REPLAY MISMATCH: {got} bytes, sha256 {replay_sha}")
    return out


def run_ours(root: Path, input_path: Path, size: int, sha: str, *, request_bytes: int,
             chunk_size: int, extra_env: dict[str, str], paths: Sequence[str] = ("raw",),
             extra_pids: dict[str, int] | None = None) -> dict[str, Any]:
    """One round of ours on one input: start, each path in turn, stop; return the measurements."""
    svc = Services(root, extra_env)
    out: dict[str, Any] = {"ports": dict(svc.ports), "paths": list(paths)}
    try:
        svc.start()
        pids = svc.pids()
        timed = _Timed({**pids, **(extra_pids or {})})
        for path in paths:
            if path == "raw":
                out["raw"] = _raw_path(svc, timed, input_path, size, sha,
                                       request_bytes=request_bytes, chunk_size=chunk_size)
            else:
                out["cli"] = _cli_path(svc, timed, input_path, size, sha,
                                       request_bytes=request_bytes)
        out["peak_rss_end"] = {n: peak_rss_bytes(p) for n, p in pids.items()}
        svc.check_alive()
    except BaseException as exc:
        for n in SERVICES:
            if tail := svc.log_tail(n):
                exc.add_note(f"--- last lines of {n}.log ---\n{tail}")
        raise
    finally:
        svc.stop()
    storage = svc.data_dir / "storage"
    out["stored_bytes"] = dir_bytes(storage)
    out["chunk_file_bytes"] = dir_bytes(storage, suffixes=(".lcs",))
    out["other_stored_bytes"] = out["stored_bytes"] - out["chunk_file_bytes"]
    out["log_tracebacks"] = svc.log_tracebacks()
    return out


# --- reference: bench.core's primitives on a slice of the input --------------------------------


def run_reference(data: bytes, *, chunk_size: int, zstd_level: int) -> dict[str, float]:
    """Return bench.core's single-core figures (MB/s) over `data` at our chunk size and level."""
    view = memoryview(data)
    saved = core.ZSTD_LEVEL
    core.ZSTD_LEVEL = zstd_level  # time_primitives reads the module's level at call time
    try:
        sealer = ChunkSealer(os.urandom(32), session_id="bench", zstd_level=zstd_level)
        t_pipe = core.time_pipeline(view, chunk_size, sealer)
        t_z, t_a, t_s, payload, sealed = core.time_primitives(view, chunk_size)
    finally:
        core.ZSTD_LEVEL = saved
    n = len(data)
    return {"bytes": n, "zstd_mbps": n / t_z / MB, "aes_gcm_mbps": payload / t_a / MB,
            "sha256_mbps": sealed / t_s / MB, "serial_limit_mbps": n / (t_z + t_a + t_s) / MB,
            "core_pipeline_mbps": n / t_pipe / MB, "payload_ratio": payload / n}


# --- rounds ------------------------------------------------------------------------------------


def _loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n{msg}\n{bar}", flush=True)


def run_round(k: int, args: argparse.Namespace, work: Path,
              inputs: dict[str, tuple[Path, str]], size: int, rivals: Sequence[str],
              ref_data: bytes) -> dict[str, Any]:
    """Run every system on every profile once, in orders rotated by round; return the results.

    result[profile][system]: ours (both paths) or a rival's run on that profile's input.
    """
    rdir = work / f"round-{k}"
    rdir.mkdir()
    systems = ["ours", *rivals]
    shift = (k - 1) % len(systems)
    order = systems[shift:] + systems[:shift]
    paths = list(args.paths[(k - 1) % len(args.paths):] + args.paths[:(k - 1) % len(args.paths)])
    result: dict[str, Any] = {"round": k, "order": order, "path_order": paths, "ok": True,
                              "errors": []}
    for profile, (input_path, sha) in inputs.items():
        result[profile] = {}
        for system in order:
            print(f"round {k}: {profile}: {system} ...", flush=True)
            # What the previous system wrote is flushed now, not while the next one is timed.
            os.sync()
            t0 = time.perf_counter()
            where = rdir / f"{profile}-{system}"
            try:
                if system == "ours":
                    env = dict(args.service_env)
                    extra_pids = None
                    if args.mongo is not None:
                        env["LUCID_METADATA_URL"] = args.mongo.url()
                        extra_pids = {"mongo": args.mongo.proc.pid}
                    ours = run_ours(where, input_path, size, sha,
                                    request_bytes=args.request_bytes, chunk_size=args.chunk_bytes,
                                    extra_env=env, paths=paths, extra_pids=extra_pids)
                    result[profile]["ours"] = ours
                    if ours["log_tracebacks"]:
                        _loud(f"round {k}: traceback in the log of "
                              f"{', '.join(ours['log_tracebacks'])} (see {where})")
                else:
                    result[profile][system] = RIVALS[system].run(input_path, where,
                                                                 sha).as_dict()
            except Exception as exc:  # a failed system fails the round; the others still run
                result["ok"] = False
                result["errors"].append(f"{profile} {system}: {exc}")
                _loud(f"ROUND {k} FAILED in {profile} {system}: {exc}\n"
                      f"{traceback.format_exc()}")
            finally:
                if not args.keep:
                    shutil.rmtree(where, ignore_errors=True)
            print(f"round {k}: {profile}: {system} done in {time.perf_counter() - t0:.1f}s",
                  flush=True)
    if ref_data:
        try:
            result["reference"] = run_reference(ref_data, chunk_size=args.chunk_bytes,
                                                zstd_level=args.level)
        except Exception as exc:
            result["ok"] = False
            result["errors"].append(f"reference: {exc}")
            _loud(f"ROUND {k} FAILED in the reference: {exc}\n{traceback.format_exc()}")
    if not args.keep:
        shutil.rmtree(rdir, ignore_errors=True)
    return result


# --- summary -----------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(rounds: Sequence[dict[str, Any]], size: int, rivals: Sequence[str],
              profiles: Sequence[str], paths: Sequence[str]) -> dict[str, Any]:
    """Return the medians over the rounds in which each figure was measured.

    rows["<profile>/<path>"]: our MB/s, CPU s/GB and ratios against each rival on
    that profile (per-round ratios, median and lowest).
    """
    gb, mb = size / GB, size / MB
    s: dict[str, Any] = {"rounds_ok": sum(1 for r in rounds if r["ok"]), "rows": {},
                         "rivals": {}, "peak_rss_mb": {}, "stored_over_input": {}}
    for profile in profiles:
        done = [r for r in rounds if "ours" in r.get(profile, {})]
        for path in paths:
            runs = [(r, r[profile]["ours"][path]) for r in done if path in r[profile]["ours"]]
            row: dict[str, Any] = {"rounds": len(runs), "mbps": {}, "cpu_s_per_gb": {},
                                   "ratios": {}}
            for step in ("ingest", "replay", "verify"):
                got = [o[step] for _, o in runs if step in o]
                if not got:
                    continue
                row["mbps"][step] = _median([mb / x["wall_s"] for x in got])
                keys = sorted({k for x in got for k in x["cpu_s"]})
                row["cpu_s_per_gb"][step] = {k: _median([x["cpu_s"].get(k, 0.0) / gb
                                                         for x in got]) for k in keys}
            for name in rivals:
                paired = [(r[profile][name], o) for r, o in runs if name in r[profile]]
                for step, theirs in (("ingest", "backup_s"), ("replay", "restore_s")):
                    per_round = [x[theirs] / o[step]["wall_s"] for x, o in paired]
                    row["ratios"][f"{step}_vs_{name}"] = _median(per_round)
                    row["ratios"][f"{step}_vs_{name}_min"] = min(per_round, default=None)
            s["rows"][f"{profile}/{path}"] = row
        for name in rivals:
            rival = [r[profile][name] for r in rounds if name in r.get(profile, {})]
            s["rivals"][f"{profile}/{name}"] = {
                "backup_mbps": _median([mb / x["backup_s"] for x in rival]),
                "restore_mbps": _median([mb / x["restore_s"] for x in rival]),
                "backup_cpu_s_per_gb": _median([x["backup_cpu_s"] / gb for x in rival]),
                "restore_cpu_s_per_gb": _median([x["restore_cpu_s"] / gb for x in rival]),
                "stored_over_input": _median([x["repo_bytes"] / size for x in rival])}
        ours = [r[profile]["ours"] for r in done]
        s["peak_rss_mb"][profile] = {n: max((o["peak_rss_end"][n] / MB for o in ours),
                                            default=None) for n in SERVICES}
        s["stored_over_input"][profile] = _median([o["stored_bytes"] / size / len(o["paths"])
                                                   for o in ours])
    refs = [r["reference"] for r in rounds if "reference" in r]
    s["reference"] = {k: _median([x[k] for x in refs]) for k in refs[0]} if refs else {}
    return s


def targets(s: dict[str, Any], rivals: Sequence[str]) -> list[dict[str, Any]]:
    """Return each target of issue #16 with its value and PASS/MISS (n/a: not measured).

    Hard: on the mixed and static profiles, both paths: ingest >= 1.5x restic (no round
    below 1.0x), replay >= 2.0x; the CLI's path <= 4.0 / 2.5 CPU s/GB over the three
    services; peak RSS within budget; the Pi 5 arithmetic >= twice the NIC.  Stretch:
    ingest >= 2.0x and replay >= 2.5x restic on every profile and path.
    """
    out: list[dict[str, Any]] = []

    def add(kind: str, what: str, value: float | None, ok: bool | None, unit: str,
            note: str = "") -> None:
        status = "n/a" if value is None or ok is None else ("PASS" if ok else "MISS")
        out.append({"kind": kind, "target": what, "value": value, "unit": unit,
                    "status": status, "note": note})

    for key, row in s["rows"].items():
        profile, path = key.split("/")
        hard = profile in HARD_PROFILES
        for step, goal, stretch in (("ingest", INGEST_RATIO, INGEST_STRETCH),
                                    ("replay", REPLAY_RATIO, REPLAY_STRETCH)):
            v = row["ratios"].get(f"{step}_vs_restic")
            low = row["ratios"].get(f"{step}_vs_restic_min")
            if hard:
                ok = v is not None and v >= goal and (
                    step != "ingest" or (low is not None and low >= FLOOR_RATIO))
                floor = f" (never < {FLOOR_RATIO}x)" if step == "ingest" else ""
                add("hard", f"{key}: {step} >= {goal}x restic{floor}", v,
                    None if v is None else ok, "x",
                    "" if low is None else f"lowest round {low:.2f}x")
            add("stretch", f"{key}: {step} >= {stretch}x restic", v,
                None if v is None else v >= stretch, "x")
        cpu = row["cpu_s_per_gb"]
        for step, limit in (("ingest", CPU_INGEST), ("replay", CPU_REPLAY)):
            c = cpu.get(step, {}).get("services")
            if path == "cli" and hard:
                add("hard", f"{key}: {step} CPU <= {limit} s/GB (three services)", c,
                    None if c is None else c <= limit, "s/GB")
            pi = None if not c else PI_CORES / (PI_SLOWDOWN * c) * 1000
            if hard:
                add("hard", f"{key}: Pi 5 {step} >= 2x gigabit NIC ({PI_TARGET:.0f} MB/s)", pi,
                    None if pi is None else pi >= PI_TARGET, "MB/s",
                    "" if c is None else f"{PI_CORES} / ({PI_SLOWDOWN:g} x {c:.2f}) x 1000")
    for n in SERVICES:
        peaks = [p[n] for p in s["peak_rss_mb"].values() if p.get(n) is not None]
        v = max(peaks, default=None)
        add("hard", f"peak RSS of {n} <= {RSS_LIMIT_MB[n]:.0f} MB (max over rounds)", v,
            None if v is None else v <= RSS_LIMIT_MB[n], "MB")
    return out


# --- reporting ---------------------------------------------------------------------------------


def _f(v: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_report(result: dict[str, Any]) -> str:
    s, rivals = result["summary"], result["rivals_run"]
    L: list[str] = []
    cfg = result["config"]
    L.append(f"\n== results: medians of {cfg['rounds']} round(s), {cfg['size_mib']} MiB per "
             f"input, store {cfg['store']}; MB/s = 10^6 B of input per wall second ==")
    L.append("raw = sendfile PATCHes + one GET hashed as read; cli = `lucid-sessions upload` "
             "and `replay -o FILE`")
    L.append("ratios: ours/rival, median of per-round ratios (lowest round in brackets)")
    head = (f"{'profile/path':<15}{'ingest':>8}" + "".join(f"{n:>8}" for n in rivals)
            + "".join(f"{'x' + n:>15}" for n in rivals) + f"{'replay':>8}"
            + "".join(f"{n:>8}" for n in rivals) + "".join(f"{'x' + n:>15}" for n in rivals)
            + f"{'CPU in':>8}{'CPU out':>8}")
    L += [head, "-" * len(head)]
    for key, row in s["rows"].items():
        profile = key.split("/")[0]
        line = f"{key:<15}{_f(row['mbps'].get('ingest')):>8}"
        line += "".join(f"{_f(s['rivals'].get(f'{profile}/{n}', {}).get('backup_mbps')):>8}"
                        for n in rivals)
        for n in rivals:
            line += (f"{_f(row['ratios'].get(f'ingest_vs_{n}'), '.2f')}x "
                     f"({_f(row['ratios'].get(f'ingest_vs_{n}_min'), '.2f')})").rjust(15)
        line += f"{_f(row['mbps'].get('replay')):>8}"
        line += "".join(f"{_f(s['rivals'].get(f'{profile}/{n}', {}).get('restore_mbps')):>8}"
                        for n in rivals)
        for n in rivals:
            line += (f"{_f(row['ratios'].get(f'replay_vs_{n}'), '.2f')}x "
                     f"({_f(row['ratios'].get(f'replay_vs_{n}_min'), '.2f')})").rjust(15)
        cpu = row["cpu_s_per_gb"]
        line += f"{_f(cpu.get('ingest', {}).get('services'), '.2f'):>8}"
        line += f"{_f(cpu.get('replay', {}).get('services'), '.2f'):>8}"
        L.append(line)

    L.append("\nCPU seconds per GB (10^9 B) of input, per service (client: not counted in ours)")
    who = [*SERVICES, *(["mongo"] if cfg["store"] == "mongo" else []), "services", "client"]
    head = f"{'profile/path':<15}{'step':<8}" + "".join(f"{n:>10}" for n in who) + \
        f"{'MB/s':>8}"
    L += [head, "-" * len(head)]
    for key, row in s["rows"].items():
        for step, c in row["cpu_s_per_gb"].items():
            L.append(f"{key:<15}{step:<8}" + "".join(f"{_f(c.get(n), '.2f'):>10}" for n in who)
                     + f"{_f(row['mbps'].get(step)):>8}")
    for key, x in s["rivals"].items():
        L.append(f"{key}: backup {_f(x['backup_cpu_s_per_gb'], '.2f')}, restore "
                 f"{_f(x['restore_cpu_s_per_gb'], '.2f')} CPU s/GB (whole process tree), "
                 f"stored {_f(x['stored_over_input'], '.3f')} of the input")

    L.append("\npeak RSS (VmHWM) at the end of a round (both paths), max over rounds, MB")
    L.append(f"{'profile':<10}" + "".join(f"{n:>11}" for n in SERVICES) + f"{'stored/in':>11}")
    for profile, peaks in s["peak_rss_mb"].items():
        L.append(f"{profile:<10}" + "".join(f"{_f(peaks[n]):>11}" for n in SERVICES)
                 + f"{_f(s['stored_over_input'].get(profile), '.3f'):>11}")

    ref = s["reference"]
    if ref:
        L.append(f"\nreference (bench.core, 1 core, {ref['bytes'] / MiB:.0f} MiB slice of the "
                 f"mixed input, chunk {cfg['chunk_size'] / MiB:g} MiB, zstd level "
                 f"{cfg['zstd_level']}): zstd {_f(ref['zstd_mbps'])}, AES-256-GCM "
                 f"{_f(ref['aes_gcm_mbps'])}*, SHA-256 {_f(ref['sha256_mbps'])}*, serial limit "
                 f"{_f(ref['serial_limit_mbps'])}, core pipeline {_f(ref['core_pipeline_mbps'])} "
                 "MB/s")
        L.append("  (* over the bytes each sees: AES the payloads, SHA-256 the sealed chunks)")
    if "cli_startup_s" in result:
        L.append(f"\n`lucid-sessions --help` (interpreter + imports) takes "
                 f"{result['cli_startup_s']:.2f} s; each CLI step pays it once")

    L.append("\ntargets (issue #16; stretch targets do not block)")
    for t in result["targets"]:
        unit = t["unit"]
        val = "-" if t["value"] is None else \
            _f(t["value"], ".2f") + ("x" if unit == "x" else f" {unit}")
        note = f"  [{t['note']}]" if t["note"] else ""
        L.append(f"  {t['status']:<4} {t['kind']:<8} {t['target']}: {val}{note}")
    if result["failed_rounds"]:
        L.append(f"\nFAILED ROUNDS: {result['failed_rounds']}")
    return "\n".join(L)


def machine_info() -> dict[str, Any]:
    info = core.machine_info()
    info["httpx"] = httpx.__version__
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text(encoding="ascii").split()[:3]
    for name, rival in RIVALS.items():
        info[name] = rival.version() if rival.available() else "not installed"
    return info


# --- command line ------------------------------------------------------------------------------


def _size(text: str) -> int:
    """Parse a byte count: 1048576, 1M, 1MiB, 512K, 512KiB."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": 1 << 10, "m": 1 << 20}.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=256,
                   help="size of each profile's input in MiB (default 256)")
    p.add_argument("--profiles", default="mixed,static,random",
                   help=f"inputs, of {', '.join(PROFILES)} (default: all)")
    p.add_argument("--paths", default="raw,cli", help="raw (sendfile + GET), cli (the "
                   "`lucid-sessions upload`/`replay` commands); default both")
    p.add_argument("--store", choices=("sqlite", "mongo"), default="sqlite",
                   help="metadata store: embedded SQLite or a SecantusDB server (dev extra)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (default 3)")
    p.add_argument("--request-mib", type=int, default=256,
                   help="bytes per PATCH request in MiB, a multiple of the chunk size (256)")
    p.add_argument("--chunk-size", type=_size, help="LUCID_CHUNK_SIZE in bytes (1M, 4MiB...; "
                   "default: the service default)")
    p.add_argument("--inflight", type=int, help="LUCID_INFLIGHT_CHUNKS (default: service's)")
    p.add_argument("--prefetch", type=int, help="LUCID_PREFETCH_CHUNKS (default: service's)")
    p.add_argument("--zstd-level", type=int, help="LUCID_ZSTD_LEVEL (default: service's)")
    p.add_argument("--env", action="append", default=[], metavar="LUCID_X=V",
                   help="any other LUCID_* setting for the services (repeatable)")
    p.add_argument("--no-rivals", action="store_true", help="skip restic and borg")
    p.add_argument("--rivals", default="restic,borg", help="which rivals (default restic,borg)")
    p.add_argument("--ref-mib", type=int, default=64,
                   help="slice of the input for the bench.core reference (MiB, 0 = skip; 64)")
    p.add_argument("--workdir", help="where the input, data dirs and repos go "
                   "(default: a new temp dir under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (input, data, repos)")
    p.add_argument("--json", metavar="PATH", help="results JSON (default "
                   "bench-results/e2e-<timestamp>.json)")
    args = p.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1 or args.request_mib < 1 or args.ref_mib < 0:
        p.error("--size-mib, --rounds and --request-mib must be >= 1, --ref-mib >= 0")
    env: dict[str, str] = {}
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("LUCID_"):
            p.error(f"--env wants LUCID_NAME=VALUE, got {item!r}")
        env[key] = value
    for flag, var in (("chunk_size", "LUCID_CHUNK_SIZE"), ("inflight", "LUCID_INFLIGHT_CHUNKS"),
                      ("prefetch", "LUCID_PREFETCH_CHUNKS"), ("zstd_level", "LUCID_ZSTD_LEVEL")):
        if getattr(args, flag) is not None:
            env[var] = str(getattr(args, flag))
    args.service_env = env
    args.chunk_bytes = int(env.get("LUCID_CHUNK_SIZE", DEFAULT_CHUNK_SIZE))
    args.level = int(env.get("LUCID_ZSTD_LEVEL", DEFAULT_ZSTD_LEVEL))
    args.request_bytes = args.request_mib * MiB
    if args.request_bytes % args.chunk_bytes:
        p.error(f"--request-mib {args.request_mib} is not a multiple of the chunk size "
                f"{args.chunk_bytes}")
    wanted = [] if args.no_rivals else [n.strip() for n in args.rivals.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in RIVALS]
    if unknown:
        p.error(f"unknown rival(s) {unknown}; known: {sorted(RIVALS)}")
    args.wanted_rivals = wanted
    args.profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not args.profiles or set(args.profiles) - set(PROFILES):
        p.error(f"--profiles: choose among {', '.join(PROFILES)}")
    if not args.paths or set(args.paths) - {"raw", "cli"}:
        p.error("--paths: raw, cli or both")
    return args


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the finally blocks stop the services."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _cli_startup() -> float:
    """Return the wall seconds of `python -m sessions.client --help` (best of three)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sessions.client", "--help"],  # noqa: S603
                       capture_output=True, check=True, timeout=60)
        best = min(best, time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def _store(args: argparse.Namespace, work: Path) -> Iterator[None]:
    """Start the SecantusDB server for `--store mongo` (args.mongo; None for sqlite)."""
    args.mongo = None
    if args.store != "mongo":
        yield
        return
    try:
        from tests.mongo_server import MongoServer  # the dev extra: secantus, pymongo
    except ImportError as exc:
        raise SystemExit("--store mongo needs the dev extra "
                         f"(pip install -e '.[dev]'): {exc}") from None
    server = MongoServer(work / "mongo")
    server.start()
    args.mongo = server
    try:
        yield
    finally:
        server.remove()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write the JSON and return the results."""
    args = parse_args(argv)
    info = machine_info()
    info["client"] = ("raw: sendfile up, recv_into down (bench/client.py); cli: the "
                      "lucid-sessions commands")
    print("== Lucid Sessions end-to-end benchmark ==")
    for k, v in info.items():
        print(f"{k:>17}: {v}")
    rivals = []
    for name in args.wanted_rivals:
        if RIVALS[name].available():
            rivals.append(name)
        else:
            _loud(f"RIVAL SKIPPED: `{RIVALS[name].binary}` not found; {INSTALL_HINT}")
    if args.no_rivals:
        print("rivals: skipped (--no-rivals)")

    made_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="lucid-bench-e2e-", dir="/tmp") if made_tmp
                else args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    inputs: dict[str, tuple[Path, str]] = {}
    rounds: list[dict[str, Any]] = []
    startup = None
    try:
        with _sigterm_as_interrupt(), _store(args, work):
            for profile in args.profiles:
                t0 = time.perf_counter()
                path = work / f"input-{profile}-{args.size_mib}MiB.bin"
                inputs[profile] = (path, write_input(path, size, profile))
                print(f"input {profile}: {path} ({args.size_mib} MiB = {size / MB:.1f} MB) "
                      f"sha256 {inputs[profile][1][:16]}..., ready in "
                      f"{time.perf_counter() - t0:.1f}s")
            print(f"ours: chunk {args.chunk_bytes} B, requests of {args.request_mib} MiB, "
                  f"zstd level {args.level}, store {args.store}, paths {args.paths}, "
                  f"service env {args.service_env or '(defaults)'}")
            if "cli" in args.paths:
                startup = _cli_startup()
            ref_data = b""
            if args.ref_mib:
                ref_data = bytes(core.make_input(min(args.ref_mib * MiB, size)))
            for n in range(1, args.rounds + 1):
                rounds.append(run_round(n, args, work, inputs, size, rivals, ref_data))
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            for rdir in work.glob("round-*"):
                shutil.rmtree(rdir, ignore_errors=True)
            if made_tmp:
                shutil.rmtree(work, ignore_errors=True)
            else:
                for path, _ in inputs.values():
                    path.unlink(missing_ok=True)
                    path.with_suffix(".sha256").unlink(missing_ok=True)

    summary = summarize(rounds, size, rivals, args.profiles, args.paths)
    failed = [r["round"] for r in rounds if not r["ok"]]
    result: dict[str, Any] = {
        "machine": info,
        "config": {"size_mib": args.size_mib, "input_bytes": size,
                   "inputs_sha256": {k: v[1] for k, v in inputs.items()},
                   "profiles": args.profiles, "paths": args.paths, "store": args.store,
                   "rounds": args.rounds, "request_mib": args.request_mib,
                   "chunk_size": args.chunk_bytes, "zstd_level": args.level,
                   "service_env": args.service_env,
                   "ref_mib": args.ref_mib, "units": {
                       "mbps": "10^6 bytes of input per wall second",
                       "cpu_s_per_gb": "CPU seconds per 10^9 bytes of input",
                       "rss_mb": "10^6 bytes"}},
        "rivals_requested": args.wanted_rivals, "rivals_run": rivals,
        "rounds": rounds, "failed_rounds": failed, "summary": summary,
    }
    if startup is not None:
        result["cli_startup_s"] = startup
    result["targets"] = targets(summary, rivals)
    measured = all(row["rounds"] > 0 for row in summary["rows"].values())
    result["ok"] = not failed and measured
    print(format_report(result))
    path = Path(args.json) if args.json else \
        REPO / "bench-results" / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nJSON: {path}")
    if failed:
        _loud(f"{len(failed)} of {args.rounds} round(s) FAILED: {failed} (see above)")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
