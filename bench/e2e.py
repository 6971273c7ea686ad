"""End-to-end benchmark: the three services on loopback against restic and borg.

    python -m bench.e2e [--size-mib N] [--rounds R] [--request-mib M] [--json PATH]
                        [--chunk-size B] [--inflight N] [--prefetch N] [--zstd-level L]
                        [--env LUCID_X=V ...] [--no-rivals] [--workdir DIR] [--keep]

Input: bench/core.py's deterministic session-like stream (half screen-like frames,
half incompressible bytes), 1 GiB by default, written once to a file in the work dir.

Each round, in an order rotated from round to round:

* **ours**: storage, processor and gateway as three processes (`python -m sessions.cli
  serve <svc>`) on free loopback ports, a fresh data dir (embedded SQLite + chunk
  files), `LUCID_LOG_LEVEL=warning`, the default chunk size unless `--chunk-size`.
  - ingest: create a session, PATCH the file in `--request-mib` requests, each body
    sent with sendfile(2) (Content-Length set, no Upload-Checksum; bench/client.py),
    finalize.  The wall time runs from the create to the finalize's answer.
  - replay: GET .../replay read into one reused buffer and SHA-256; must equal the input.
  - verify: POST .../verify (100 %) must report ok.
  Per step: CPU seconds (utime + stime, /proc/<pid>/stat) of each service and of this
  client; each service's peak RSS (VmHWM) after ingest; stored bytes (the storage
  dir: chunk files + SQLite files, measured after the services stopped).
* **restic** (repo v2, --compression auto) and **borg** (repokey, zstd,3): backup and
  restore of the same file, fresh repository (see bench/rivals.py).
* **reference**: bench/core.py's single-core primitives (zstd at our level,
  AES-256-GCM, SHA-256) and its one-core pipeline on a slice of the same input.

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
from bench.procstats import cpu_seconds, dir_bytes, peak_rss_bytes, rss_bytes
from bench.rivals import INSTALL_HINT, RIVALS
from sessions import loopback
from sessions.core import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL
from sessions.core._sealing import ChunkSealer
from sessions.loopback import SERVICES

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
MB = 1_000_000
GB = 1_000_000_000
START_TIMEOUT = 30.0
HTTP_TIMEOUT_S = 900.0
HTTP_TIMEOUT = httpx.Timeout(HTTP_TIMEOUT_S, connect=10.0)
UPLOAD_TYPE = "application/offset+octet-stream"
NODE_NAME = "lucid-bench"

# targets
TARGET_RATIO, FLOOR_RATIO = 1.5, 1.0  # ours / restic, ingest and replay
RSS_LIMIT_MB = 150.0  # per service
PI_CORES, PI_SLOWDOWN = 4, 3.0  # a Pi 5: 4 cores at ~1/3 of this machine's per-core speed
GIGABIT_MBPS = 117.0  # what a gigabit NIC carries in payload


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


def write_input(path: Path, total: int) -> str:
    """Write the input file (or reuse one with a matching sidecar); return its hex SHA-256."""
    tag = path.with_suffix(".sha256")
    key = f"{total} {core.SEED}"
    if path.exists() and tag.exists() and path.stat().st_size == total:
        size_seed, _, digest = tag.read_text(encoding="utf-8").strip().rpartition(" ")
        if size_seed == key:
            return digest
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for piece in iter_input(total):
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
        self.ports = {name: loopback.free_port() for name in SERVICES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = loopback.service_env(data_dir=self.data_dir, ports=self.ports, extra={
            "LUCID_LOG_LEVEL": "warning", "LUCID_NODE_NAME": NODE_NAME, **extra_env})

    def url(self, name: str) -> str:
        return loopback.url(self.ports[name])

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return loopback.log_tail(self.log_path(name), lines)

    def start(self) -> None:
        """Start storage, then the processor, then the gateway; wait until the chain is ready."""
        for name in SERVICES:
            self.procs[name] = loopback.spawn(
                name, env=self.env, log=self.log_path(name),
                preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads run at this point
            loopback.wait_ok(name, self.procs[name], self.url(name) + "/health",
                             timeout=START_TIMEOUT, log=self.log_path(name))
        loopback.wait_ok("api", self.procs["api"], self.url("api") + "/ready",
                         timeout=START_TIMEOUT, log=self.log_path("api"))

    def stop(self) -> None:
        """Terminate every service (gateway first), killing any that does not exit in 10 s."""
        loopback.stop_all(self.procs)

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
    snap["client"] = time.process_time()
    return snap


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    d["services"] = sum(d[name] for name in SERVICES)
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


def run_ours(root: Path, input_path: Path, size: int, sha: str, *, request_bytes: int,
             chunk_size: int, extra_env: dict[str, str]) -> dict[str, Any]:
    """One round of ours: start, ingest, replay, verify, stop; return the measurements."""
    svc = Services(root, extra_env)
    out: dict[str, Any] = {"ports": dict(svc.ports)}
    try:
        svc.start()
        pids = svc.pids()
        base, token = svc.url("api") + "/v1", svc.token()
        with svc.client() as api:
            # -- ingest: create, PATCH in big streamed requests, finalize --------------------
            before = _cpu_snapshot(pids)
            t0 = time.perf_counter()
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
            t_up = time.perf_counter()
            session = _expect(api.post(f"/sessions/{sid}/finalize"), 200, "finalize")
            t1 = time.perf_counter()
            after = _cpu_snapshot(pids)
            svc.check_alive()
            out["peak_rss_after_ingest"] = {n: peak_rss_bytes(p) for n, p in pids.items()}
            out["rss_after_ingest"] = {n: rss_bytes(p) for n, p in pids.items()}
            if session["state"] != "completed" or session["offset"] != size:
                raise BenchError(f"finalize answered {session}")
            out["session"] = {"id": sid, "chunk_count": session["chunk_count"],
                              "sealed_bytes": session["sealed_bytes"], "requests": requests}
            out["ingest"] = {"wall_s": t1 - t0, "upload_s": t_up - t0, "finalize_s": t1 - t_up,
                             "cpu_s": _cpu_delta(before, after)}

            # -- replay: read into SHA-256 -------------------------------------------------
            before = _cpu_snapshot(pids)
            t0 = time.perf_counter()
            got, replay_sha = _bulk(replay_sha256, base, token, sid, timeout=HTTP_TIMEOUT_S)
            t1 = time.perf_counter()
            after = _cpu_snapshot(pids)
            out["replay"] = {"wall_s": t1 - t0, "bytes": got, "sha256": replay_sha,
                             "sha256_ok": replay_sha == sha and got == size,
                             "cpu_s": _cpu_delta(before, after)}
            if not out["replay"]["sha256_ok"]:
                raise BenchError(f"REPLAY MISMATCH: {got} bytes, sha256 {replay_sha}, "
                                 f"input {size} bytes, sha256 {sha}")

            # -- verify (full) ----------------------------------------------------------------
            before = _cpu_snapshot(pids)
            t0 = time.perf_counter()
            report = _expect(api.post(f"/sessions/{sid}/verify"), 200, "verify")
            t1 = time.perf_counter()
            after = _cpu_snapshot(pids)
            out["verify"] = {"wall_s": t1 - t0, "ok": bool(report.get("ok")),
                             "checked": report.get("checked"),
                             "bad_chunks": report.get("bad_chunks"),
                             "cpu_s": _cpu_delta(before, after)}
            if not (report.get("ok") and report.get("checked") == session["chunk_count"]):
                raise BenchError(f"VERIFY FAILED: {report}")
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


def run_round(k: int, args: argparse.Namespace, work: Path, input_path: Path, size: int,
              sha: str, rivals: Sequence[str], ref_data: bytes) -> dict[str, Any]:
    """Run every system once, in an order rotated by round; return the round's results."""
    rdir = work / f"round-{k}"
    rdir.mkdir()
    systems = ["ours", *rivals]
    shift = (k - 1) % len(systems)
    order = systems[shift:] + systems[:shift]
    result: dict[str, Any] = {"round": k, "order": order, "ok": True, "errors": []}
    for system in order:
        print(f"round {k}: {system} ...", flush=True)
        # What the previous system wrote is flushed now, not while the next one is timed.
        os.sync()
        t0 = time.perf_counter()
        try:
            if system == "ours":
                result["ours"] = run_ours(
                    rdir / "ours", input_path, size, sha, request_bytes=args.request_bytes,
                    chunk_size=args.chunk_bytes, extra_env=args.service_env)
                if result["ours"]["log_tracebacks"]:
                    _loud(f"round {k}: traceback in the log of "
                          f"{', '.join(result['ours']['log_tracebacks'])} (see {rdir / 'ours'})")
            else:
                result[system] = RIVALS[system].run(input_path, rdir / system, sha).as_dict()
        except Exception as exc:  # a failed system fails the round; the others still run
            result["ok"] = False
            result["errors"].append(f"{system}: {exc}")
            _loud(f"ROUND {k} FAILED in {system}: {exc}\n{traceback.format_exc()}")
        finally:
            if not args.keep:
                shutil.rmtree(rdir / system, ignore_errors=True)
        print(f"round {k}: {system} done in {time.perf_counter() - t0:.1f}s", flush=True)
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


def summarize(rounds: Sequence[dict[str, Any]], size: int, rivals: Sequence[str]
              ) -> dict[str, Any]:
    """Return the medians over the rounds in which each figure was measured."""
    gb, mb = size / GB, size / MB
    ours = [r["ours"] for r in rounds if "verify" in r.get("ours", {})]

    def med(fn: Callable[[dict[str, Any]], float], src: Sequence[dict[str, Any]]) -> float | None:
        return _median([fn(x) for x in src])

    s: dict[str, Any] = {"rounds_ok": sum(1 for r in rounds if r["ok"]),
                         "rounds_measured_ours": len(ours)}
    mbps: dict[str, float | None] = {
        "ours_ingest": med(lambda o: mb / o["ingest"]["wall_s"], ours),
        "ours_upload_only": med(lambda o: mb / o["ingest"]["upload_s"], ours),
        "ours_replay": med(lambda o: mb / o["replay"]["wall_s"], ours),
        "ours_verify": med(lambda o: mb / o["verify"]["wall_s"], ours),
    }
    cpu: dict[str, Any] = {}
    for step in ("ingest", "replay", "verify"):
        cpu[step] = {k: _median([o[step]["cpu_s"][k] / gb for o in ours])
                     for k in (*SERVICES, "services", "client")}
    ratios: dict[str, float | None] = {}
    stored: dict[str, float | None] = {
        "ours": med(lambda o: o["stored_bytes"] / size, ours),
        "ours_chunk_files": med(lambda o: o["chunk_file_bytes"] / size, ours),
        "ours_other": med(lambda o: o["other_stored_bytes"] / size, ours),
    }
    for name in rivals:
        runs = [r[name] for r in rounds if name in r]
        mbps[f"{name}_backup"] = med(lambda x: mb / x["backup_s"], runs)
        mbps[f"{name}_restore"] = med(lambda x: mb / x["restore_s"], runs)
        cpu[f"{name}_backup"] = med(lambda x: x["backup_cpu_s"] / gb, runs)
        cpu[f"{name}_restore"] = med(lambda x: x["restore_cpu_s"] / gb, runs)
        stored[name] = med(lambda x: x["repo_bytes"] / size, runs)
        paired = [r for r in rounds if name in r and "verify" in r.get("ours", {})]
        ratios[f"ingest_vs_{name}"] = _median(
            [r[name]["backup_s"] / r["ours"]["ingest"]["wall_s"] for r in paired])
        ratios[f"replay_vs_{name}"] = _median(
            [r[name]["restore_s"] / r["ours"]["replay"]["wall_s"] for r in paired])
    rss: dict[str, Any] = {}
    for n in SERVICES:
        hwm = [o["peak_rss_after_ingest"][n] / MB for o in ours]
        end = [o["peak_rss_end"][n] / MB for o in ours]
        rss[n] = {"after_ingest_median": _median(hwm), "after_ingest_max": max(hwm, default=None),
                  "end_max": max(end, default=None)}
    refs = [r["reference"] for r in rounds if "reference" in r]
    reference = {k: _median([x[k] for x in refs]) for k in refs[0]} if refs else {}
    s.update({"mbps": mbps, "ratios": ratios, "cpu_s_per_gb": cpu, "peak_rss_mb": rss,
              "stored_over_input": stored, "reference": reference})
    return s


def targets(s: dict[str, Any], rivals: Sequence[str]) -> list[dict[str, Any]]:
    """Return each target with its value and PASS/MISS (n/a when it was not measured)."""
    out: list[dict[str, Any]] = []

    def ratio_target(key: str, what: str) -> None:
        v = s["ratios"].get(key)
        note = ""
        if v is None:
            status = "n/a"
            note = "restic not run" if "restic" not in rivals else "no round with both measured"
        elif v >= TARGET_RATIO:
            status = "PASS"
        else:
            status = "MISS"
            note = f"BELOW the {FLOOR_RATIO}x floor" if v < FLOOR_RATIO else \
                f"above the {FLOOR_RATIO}x floor"
        out.append({"target": f"{what} >= {TARGET_RATIO}x restic (never < {FLOOR_RATIO}x)",
                    "value": v, "unit": "x", "status": status, "note": note})

    ratio_target("ingest_vs_restic", "ingest")
    ratio_target("replay_vs_restic", "replay")
    for n in SERVICES:
        v = s["peak_rss_mb"][n]["after_ingest_max"]
        out.append({"target": f"peak RSS of {n} <= {RSS_LIMIT_MB:.0f} MB (max over rounds)",
                    "value": v, "unit": "MB", "note": "",
                    "status": "n/a" if v is None else ("PASS" if v <= RSS_LIMIT_MB else "MISS")})
    c = s["cpu_s_per_gb"]["ingest"]["services"]
    pi = None if not c else PI_CORES / (PI_SLOWDOWN * c) * 1000
    out.append({"target": f"Pi 5 ingest >= gigabit NIC ({GIGABIT_MBPS:.0f} MB/s)",
                "value": pi, "unit": "MB/s", "cpu_s_per_gb": c,
                "note": "" if c is None else f"{PI_CORES} cores / ({PI_SLOWDOWN:g} x {c:.2f} "
                                             "CPU s/GB of the three services) x 1000",
                "status": "n/a" if pi is None else ("PASS" if pi >= GIGABIT_MBPS else "MISS")})
    return out


# --- reporting ---------------------------------------------------------------------------------


def _f(v: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_report(result: dict[str, Any]) -> str:
    s, rivals = result["summary"], result["rivals_run"]
    m, r, cpu = s["mbps"], s["ratios"], s["cpu_s_per_gb"]
    L: list[str] = []
    n_ok = s["rounds_measured_ours"]
    L.append(f"\n== results: medians of {n_ok} round(s) of ours; MB/s = 10^6 B of input per "
             "wall second ==")
    head = f"{'step':<20}{'ours':>9}" + "".join(f"{n:>10}" for n in rivals) + "".join(
        f"{'ours/' + n:>13}" for n in rivals)
    L += [head, "-" * len(head)]
    rows = [("ingest vs backup", "ours_ingest", "backup", "ingest_vs_"),
            ("replay vs restore", "ours_replay", "restore", "replay_vs_")]
    for label, ok, rk, rat in rows:
        line = f"{label:<20}{_f(m[ok]):>9}" + "".join(f"{_f(m.get(f'{n}_{rk}')):>10}"
                                                      for n in rivals)
        line += "".join(f"{_f(r.get(rat + n), '.2f') + 'x':>13}" for n in rivals)
        L.append(line)
    L.append(f"{'verify (full)':<20}{_f(m['ours_verify']):>9}")
    L.append(f"(ingest = create + {result['config']['request_mib']} MiB PATCHes + finalize; "
             f"upload alone: {_f(m['ours_upload_only'])} MB/s)")

    L.append("\nCPU seconds per GB (10^9 B) of input")
    head = f"{'step':<10}" + "".join(f"{n:>11}" for n in SERVICES) + f"{'services':>11}" + \
        f"{'client*':>10}"
    L += [head, "-" * len(head)]
    for step in ("ingest", "replay", "verify"):
        c = cpu[step]
        L.append(f"{step:<10}" + "".join(f"{_f(c[n], '.2f'):>11}" for n in SERVICES)
                 + f"{_f(c['services'], '.2f'):>11}{_f(c['client'], '.2f'):>10}")
    L.append("* the benchmark client (sendfile up, recv_into down; httpx for the rest),"
             " not counted in ours")
    for n in rivals:
        L.append(f"{n}: backup {_f(cpu.get(f'{n}_backup'), '.2f')}, restore "
                 f"{_f(cpu.get(f'{n}_restore'), '.2f')} CPU s/GB (whole process tree)")

    L.append("\npeak RSS (VmHWM), MB = 10^6 B")
    L.append(f"{'service':<11}{'after ingest (median)':>23}{'(max)':>8}{'end of round (max)':>20}")
    for n in SERVICES:
        x = s["peak_rss_mb"][n]
        L.append(f"{n:<11}{_f(x['after_ingest_median']):>23}{_f(x['after_ingest_max']):>8}"
                 f"{_f(x['end_max']):>20}")

    st = s["stored_over_input"]
    L.append("\nstored bytes / input bytes: ours " + _f(st["ours"], ".4f")
             + f" (chunk files {_f(st['ours_chunk_files'], '.4f')}, SQLite etc. "
             + f"{_f(st['ours_other'], '.5f')})"
             + "".join(f", {n} {_f(st.get(n), '.4f')}" for n in rivals))

    ref = s["reference"]
    if ref:
        L.append(f"\nreference (bench.core, 1 core, {ref['bytes'] / MiB:.0f} MiB slice, chunk "
                 f"{result['config']['chunk_size'] / MiB:g} MiB, zstd level "
                 f"{result['config']['zstd_level']}): zstd {_f(ref['zstd_mbps'])}, AES-256-GCM "
                 f"{_f(ref['aes_gcm_mbps'])}*, SHA-256 {_f(ref['sha256_mbps'])}*, serial limit "
                 f"{_f(ref['serial_limit_mbps'])}, core pipeline {_f(ref['core_pipeline_mbps'])} "
                 "MB/s")
        L.append("  (* over the bytes each sees: AES the payloads, SHA-256 the sealed chunks)")

    L.append("\ntargets")
    for t in result["targets"]:
        unit = t["unit"]
        val = "-" if t["value"] is None else \
            _f(t["value"], ".2f") + ("x" if unit == "x" else f" {unit}")
        note = f"  [{t['note']}]" if t["note"] else ""
        L.append(f"  {t['status']:<4}  {t['target']}: {val}{note}")
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
    p.add_argument("--size-mib", type=int, default=1024, help="input size in MiB (default 1024)")
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write the JSON and return the results."""
    args = parse_args(argv)
    info = machine_info()
    info["client"] = "sendfile up, recv_into down (bench/client.py); httpx for the rest"
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
    input_path = work / f"input-{args.size_mib}MiB.bin"
    rounds: list[dict[str, Any]] = []
    try:
        with _sigterm_as_interrupt():
            t0 = time.perf_counter()
            sha = write_input(input_path, size)
            print(f"input: {input_path} ({args.size_mib} MiB = {size / MB:.1f} MB) sha256 "
                  f"{sha[:16]}..., ready in {time.perf_counter() - t0:.1f}s")
            print(f"ours: chunk {args.chunk_bytes} B, requests of {args.request_mib} MiB, "
                  f"zstd level {args.level}, service env {args.service_env or '(defaults)'}")
            ref_data = b""
            if args.ref_mib:
                with open(input_path, "rb") as f:
                    ref_data = f.read(min(args.ref_mib * MiB, size))
            for n in range(1, args.rounds + 1):
                rounds.append(run_round(n, args, work, input_path, size, sha, rivals, ref_data))
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            for rdir in work.glob("round-*"):
                shutil.rmtree(rdir, ignore_errors=True)
            if made_tmp:
                shutil.rmtree(work, ignore_errors=True)
            else:
                input_path.unlink(missing_ok=True)
                input_path.with_suffix(".sha256").unlink(missing_ok=True)

    summary = summarize(rounds, size, rivals)
    failed = [r["round"] for r in rounds if not r["ok"]]
    result: dict[str, Any] = {
        "machine": info,
        "config": {"size_mib": args.size_mib, "input_bytes": size, "input_sha256": sha,
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
    result["targets"] = targets(summary, rivals)
    result["ok"] = not failed and summary["rounds_measured_ours"] > 0
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
