"""From the rounds to the verdict: medians (`summarize`), targets (`targets`), tables.

MB/s = 10^6 bytes of *input* per wall second; CPU s/GB = CPU seconds per 10^9 bytes
of input; MB of RSS = 10^6 bytes.  Ratios ours/rival are medians of the per-round
ratios (both sides measured in the same round, so a noisy neighbour hits both alike).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from bench.measure import GB, MB, MiB, Reference, RoundResult, median
from sessions.client.launcher import SERVICES

# targets (issue #16)
INGEST_RATIO, REPLAY_RATIO, FLOOR_RATIO = 1.5, 2.0, 1.0  # ours / restic
INGEST_STRETCH, REPLAY_STRETCH = 2.0, 2.5
CPU_INGEST, CPU_REPLAY = 4.0, 2.5  # CPU s/GB over the three services, the CLI's path
HARD_PROFILES = ("mixed", "static")
RSS_LIMIT_MB = {"storage": 100.0, "processor": 150.0, "api": 100.0}
# storage's budget with its chunks on S3 (README, "Memory on S3"; tests/e2e/test_memory_budget.py)
RSS_LIMIT_MB_S3 = {**RSS_LIMIT_MB, "storage": 130.0}
PI_CORES, PI_SLOWDOWN = 4, 3.0  # a Pi 5: 4 cores at ~1/3 of this machine's per-core speed
GIGABIT_MBPS = 117.0  # what a gigabit NIC carries in payload
PI_TARGET = 2 * GIGABIT_MBPS
STEPS = ("ingest", "replay", "verify")
UNITS = {"mbps": "10^6 bytes of input per wall second",
         "cpu_s_per_gb": "CPU seconds per 10^9 bytes of input", "rss_mb": "10^6 bytes"}


@dataclass
class Row:
    """Our figures on one profile and path, medians over the rounds that measured them."""

    rounds: int
    mbps: dict[str, float | None] = field(default_factory=dict)  # per step
    cpu_s_per_gb: dict[str, dict[str, float | None]] = field(default_factory=dict)  # step, who
    ratios: dict[str, float | None] = field(default_factory=dict)  # "<step>_vs_<rival>[_min]"


@dataclass
class RivalSummary:
    """A rival on one profile, medians over the rounds."""

    backup_mbps: float | None
    restore_mbps: float | None
    backup_cpu_s_per_gb: float | None
    restore_cpu_s_per_gb: float | None
    stored_over_input: float | None


@dataclass
class Summary:
    """Every figure of the report: rows by "<profile>/<path>", rivals by "<profile>/<name>"."""

    rounds_ok: int
    rows: dict[str, Row] = field(default_factory=dict)
    rivals: dict[str, RivalSummary] = field(default_factory=dict)
    peak_rss_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)
    stored_over_input: dict[str, float | None] = field(default_factory=dict)
    reference: Reference | None = None


@dataclass
class Target:
    """One target of issue #16 with its value and verdict: PASS, MISS or n/a (not measured)."""

    kind: str  # "hard" or "stretch"
    target: str
    value: float | None
    unit: str
    status: str
    note: str = ""


@dataclass
class Config:
    """What was run, as the results JSON records it."""

    size_mib: int
    input_bytes: int
    inputs_sha256: dict[str, str]
    profiles: list[str]
    paths: list[str]
    store: str
    rounds: int
    request_mib: int
    chunk_size: int
    zstd_level: int
    service_env: dict[str, str]
    ref_mib: int
    chunk_store: str = "local"  # "local": storage's data dir; "s3": SeaweedFS on loopback
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))


@dataclass
class Result:
    """The whole run: machine, configuration, every round, the summary and the targets."""

    machine: dict[str, object]
    config: Config
    rivals_requested: list[str]
    rivals_run: list[str]
    rounds: list[RoundResult]
    failed_rounds: list[int]
    summary: Summary
    targets: list[Target]
    ok: bool
    cli_startup_s: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


# --- summary -----------------------------------------------------------------------------------


def _reference(refs: Sequence[Reference]) -> Reference | None:
    """Return the medians of the reference figures (None if no round ran it)."""
    if not refs:
        return None

    def m(values: list[float]) -> float:
        got = median(values)
        assert got is not None
        return got

    return Reference(bytes=int(m([r.bytes for r in refs])),
                     zstd_mbps=m([r.zstd_mbps for r in refs]),
                     aes_gcm_mbps=m([r.aes_gcm_mbps for r in refs]),
                     sha256_mbps=m([r.sha256_mbps for r in refs]),
                     serial_limit_mbps=m([r.serial_limit_mbps for r in refs]),
                     core_pipeline_mbps=m([r.core_pipeline_mbps for r in refs]),
                     payload_ratio=m([r.payload_ratio for r in refs]))


def summarize(rounds: Sequence[RoundResult], size: int, rivals: Sequence[str],
              profiles: Sequence[str], paths: Sequence[str]) -> Summary:
    """Return the medians over the rounds in which each figure was measured.

    rows["<profile>/<path>"]: our MB/s, CPU s/GB and ratios against each rival on
    that profile (per-round ratios, median and lowest).
    """
    gb, mb = size / GB, size / MB
    s = Summary(rounds_ok=sum(1 for r in rounds if r.ok))
    for profile in profiles:
        done = [(r, run) for r in rounds
                if profile in r.profiles and (run := r.profiles[profile].ours) is not None]
        for path in paths:
            runs = [(r, o.paths[path]) for r, o in done if path in o.paths]
            row = Row(rounds=len(runs))
            for step in STEPS:
                got = [p.steps()[step] for _, p in runs if step in p.steps()]
                if not got:
                    continue
                row.mbps[step] = median([mb / x.wall_s for x in got])
                keys = sorted({k for x in got for k in x.cpu_s})
                row.cpu_s_per_gb[step] = {k: median([x.cpu_s.get(k, 0.0) / gb for x in got])
                                          for k in keys}
            for name in rivals:
                paired = [(r.profiles[profile].rivals[name], path_run) for r, path_run in runs
                          if name in r.profiles[profile].rivals]
                for step in ("ingest", "replay"):
                    per_round = [(x.backup_s if step == "ingest" else x.restore_s)
                                 / mine.steps()[step].wall_s for x, mine in paired]
                    row.ratios[f"{step}_vs_{name}"] = median(per_round)
                    row.ratios[f"{step}_vs_{name}_min"] = min(per_round, default=None)
            s.rows[f"{profile}/{path}"] = row
        for name in rivals:
            rival = [r.profiles[profile].rivals[name] for r in rounds
                     if profile in r.profiles and name in r.profiles[profile].rivals]
            s.rivals[f"{profile}/{name}"] = RivalSummary(
                backup_mbps=median([mb / x.backup_s for x in rival]),
                restore_mbps=median([mb / x.restore_s for x in rival]),
                backup_cpu_s_per_gb=median([x.backup_cpu_s / gb for x in rival]),
                restore_cpu_s_per_gb=median([x.restore_cpu_s / gb for x in rival]),
                stored_over_input=median([x.repo_bytes / size for x in rival]))
        ours = [o for _, o in done]
        watched = [*SERVICES, *sorted({n for o in ours for n in o.peak_rss_end} - set(SERVICES))]
        s.peak_rss_mb[profile] = {n: max((o.peak_rss_end[n] / MB for o in ours
                                          if n in o.peak_rss_end), default=None)
                                  for n in watched}
        s.stored_over_input[profile] = median([o.stored_bytes / size / len(o.paths)
                                               for o in ours])
    s.reference = _reference([r.reference for r in rounds if r.reference is not None])
    return s


def targets(s: Summary, rivals: Sequence[str], chunk_store: str = "local") -> list[Target]:
    """Return each target of issue #16 with its value and PASS/MISS (n/a: not measured).

    Hard: on the mixed and static profiles, both paths: ingest >= 1.5x restic (no round
    below 1.0x), replay >= 2.0x; the CLI's path <= 4.0 / 2.5 CPU s/GB over the three
    services; peak RSS within budget (storage's S3 budget with `chunk_store` "s3"); the
    Pi 5 arithmetic >= twice the NIC.  Stretch: ingest >= 2.0x and replay >= 2.5x restic
    on every profile and path.
    """
    out: list[Target] = []

    def add(kind: str, what: str, value: float | None, ok: bool | None, unit: str,
            note: str = "") -> None:
        status = "n/a" if value is None or ok is None else ("PASS" if ok else "MISS")
        out.append(Target(kind, what, value, unit, status, note))

    for key, row in s.rows.items():
        profile, path = key.split("/")
        hard = profile in HARD_PROFILES
        for step, goal, stretch in (("ingest", INGEST_RATIO, INGEST_STRETCH),
                                    ("replay", REPLAY_RATIO, REPLAY_STRETCH)):
            v = row.ratios.get(f"{step}_vs_restic")
            low = row.ratios.get(f"{step}_vs_restic_min")
            if hard:
                ok = v is not None and v >= goal and (
                    step != "ingest" or (low is not None and low >= FLOOR_RATIO))
                floor = f" (never < {FLOOR_RATIO}x)" if step == "ingest" else ""
                add("hard", f"{key}: {step} >= {goal}x restic{floor}", v,
                    None if v is None else ok, "x",
                    "" if low is None else f"lowest round {low:.2f}x")
            add("stretch", f"{key}: {step} >= {stretch}x restic", v,
                None if v is None else v >= stretch, "x")
        for step, limit in (("ingest", CPU_INGEST), ("replay", CPU_REPLAY)):
            c = row.cpu_s_per_gb.get(step, {}).get("services")
            if path == "cli" and hard:
                add("hard", f"{key}: {step} CPU <= {limit} s/GB (three services)", c,
                    None if c is None else c <= limit, "s/GB")
            pi = None if not c else PI_CORES / (PI_SLOWDOWN * c) * 1000
            if hard:
                add("hard", f"{key}: Pi 5 {step} >= 2x gigabit NIC ({PI_TARGET:.0f} MB/s)", pi,
                    None if pi is None else pi >= PI_TARGET, "MB/s",
                    "" if c is None else f"{PI_CORES} / ({PI_SLOWDOWN:g} x {c:.2f}) x 1000")
    limits = RSS_LIMIT_MB_S3 if chunk_store == "s3" else RSS_LIMIT_MB
    for n in SERVICES:
        peaks = [v for p in s.peak_rss_mb.values() if (v := p.get(n)) is not None]
        top = max(peaks, default=None)
        add("hard", f"peak RSS of {n} <= {limits[n]:.0f} MB (max over rounds)", top,
            None if top is None else top <= limits[n], "MB")
    return out


# --- tables ------------------------------------------------------------------------------------


def _f(v: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _throughput_table(s: Summary, rivals: Sequence[str]) -> list[str]:
    head = (f"{'profile/path':<15}{'ingest':>8}" + "".join(f"{n:>8}" for n in rivals)
            + "".join(f"{'x' + n:>15}" for n in rivals) + f"{'replay':>8}"
            + "".join(f"{n:>8}" for n in rivals) + "".join(f"{'x' + n:>15}" for n in rivals)
            + f"{'CPU in':>8}{'CPU out':>8}")
    lines = [head, "-" * len(head)]
    for key, row in s.rows.items():
        profile = key.split("/")[0]
        theirs = [s.rivals.get(f"{profile}/{n}") for n in rivals]
        line = f"{key:<15}{_f(row.mbps.get('ingest')):>8}"
        line += "".join(f"{_f(x.backup_mbps if x else None):>8}" for x in theirs)
        for n in rivals:
            line += (f"{_f(row.ratios.get(f'ingest_vs_{n}'), '.2f')}x "
                     f"({_f(row.ratios.get(f'ingest_vs_{n}_min'), '.2f')})").rjust(15)
        line += f"{_f(row.mbps.get('replay')):>8}"
        line += "".join(f"{_f(x.restore_mbps if x else None):>8}" for x in theirs)
        for n in rivals:
            line += (f"{_f(row.ratios.get(f'replay_vs_{n}'), '.2f')}x "
                     f"({_f(row.ratios.get(f'replay_vs_{n}_min'), '.2f')})").rjust(15)
        cpu = row.cpu_s_per_gb
        line += f"{_f(cpu.get('ingest', {}).get('services'), '.2f'):>8}"
        line += f"{_f(cpu.get('replay', {}).get('services'), '.2f'):>8}"
        lines.append(line)
    return lines


def format_report(result: Result) -> str:
    """Return the report's tables and the targets' verdicts as text."""
    s, rivals, cfg = result.summary, result.rivals_run, result.config
    L: list[str] = []
    L.append(f"\n== results: medians of {cfg.rounds} round(s), {cfg.size_mib} MiB per "
             f"input, store {cfg.store}, chunk store {cfg.chunk_store}; MB/s = 10^6 B of "
             "input per wall second ==")
    L.append("raw = buffered PATCHes + one GET hashed as read; cli = `lucid-sessions upload` "
             "and `replay -o FILE`")
    L.append("ratios: ours/rival, median of per-round ratios (lowest round in brackets)")
    L += _throughput_table(s, rivals)

    L.append("\nCPU seconds per GB (10^9 B) of input, per service (client: not counted in ours)")
    who = [*SERVICES, *(["mongo"] if cfg.store == "mongo" else []),
           *(["seaweedfs"] if cfg.chunk_store == "s3" else []), "services", "client"]
    head = f"{'profile/path':<15}{'step':<8}" + "".join(f"{n:>10}" for n in who) + \
        f"{'MB/s':>8}"
    L += [head, "-" * len(head)]
    for key, row in s.rows.items():
        for step, c in row.cpu_s_per_gb.items():
            L.append(f"{key:<15}{step:<8}" + "".join(f"{_f(c.get(n), '.2f'):>10}" for n in who)
                     + f"{_f(row.mbps.get(step)):>8}")
    for key, x in s.rivals.items():
        L.append(f"{key}: backup {_f(x.backup_cpu_s_per_gb, '.2f')}, restore "
                 f"{_f(x.restore_cpu_s_per_gb, '.2f')} CPU s/GB (whole process tree), "
                 f"stored {_f(x.stored_over_input, '.3f')} of the input")

    L.append("\npeak RSS (VmHWM) at the end of a round (both paths), max over rounds, MB"
             " (mongo, seaweedfs: their peak since the run started)")
    names = [*SERVICES, *sorted({n for p in s.peak_rss_mb.values() for n in p} - set(SERVICES))]
    L.append(f"{'profile':<10}" + "".join(f"{n:>11}" for n in names) + f"{'stored/in':>11}")
    for profile, peaks in s.peak_rss_mb.items():
        L.append(f"{profile:<10}" + "".join(f"{_f(peaks.get(n)):>11}" for n in names)
                 + f"{_f(s.stored_over_input.get(profile), '.3f'):>11}")

    ref = s.reference
    if ref is not None:
        L.append(f"\nreference (bench.core, 1 core, {ref.bytes / MiB:.0f} MiB slice of the "
                 f"mixed input, chunk {cfg.chunk_size / MiB:g} MiB, zstd level "
                 f"{cfg.zstd_level}): zstd {_f(ref.zstd_mbps)}, AES-256-GCM "
                 f"{_f(ref.aes_gcm_mbps)}*, SHA-256 {_f(ref.sha256_mbps)}*, serial limit "
                 f"{_f(ref.serial_limit_mbps)}, core pipeline {_f(ref.core_pipeline_mbps)} "
                 "MB/s")
        L.append("  (* over the bytes each sees: AES the payloads, SHA-256 the sealed chunks)")
    if result.cli_startup_s is not None:
        L.append(f"\n`lucid-sessions --help` (interpreter + imports) takes "
                 f"{result.cli_startup_s:.2f} s; each CLI step pays it once")

    L.append("\ntargets (issue #16; stretch targets do not block)")
    for t in result.targets:
        val = "-" if t.value is None else \
            _f(t.value, ".2f") + ("x" if t.unit == "x" else f" {t.unit}")
        note = f"  [{t.note}]" if t.note else ""
        L.append(f"  {t.status:<4} {t.kind:<8} {t.target}: {val}{note}")
    if result.failed_rounds:
        L.append(f"\nFAILED ROUNDS: {result.failed_rounds}")
    return "\n".join(L)
