"""The service-to-service transports side by side: ingest, replay and verify, alternated.

    python -m bench.transport_ab [--size-mib N] [--rounds R] [--transports wire,httpx]
                                 [--json PATH]

Each round runs bench.harness's `run_ours` (three fresh service processes, the same
input file, buffered uploads, SHA-256-checked replay, full verify) once per
transport, selected with LUCID_HTTP_TRANSPORT, in an order rotated from round to
round.  Reported per transport: medians over the rounds of CPU s/GB (each
service, and their sum) and MB/s, and the median of the per-round ratios of the
services' CPU s/GB to the first transport's (both measured in the same round).
CPU per GB is the figure to decide on when the machine is shared; MB/s moves
with whatever else runs.  README, "Service transport decision", has the figures
(the aiohttp adapter measured there lived at commit f55ba98 and went with the
decision).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import run_ours, write_input
from bench.measure import GB, MB, MiB, PathRun
from sessions.client.launcher import SERVICES
from sessions.core import DEFAULT_CHUNK_SIZE

STEPS = ("ingest", "replay", "verify")


@dataclass
class TransportRound:
    """One round: the raw path through our services once per transport, in `order`."""

    round: int
    order: list[str]
    runs: dict[str, PathRun]


@dataclass
class TransportStep:
    """One transport on one step, over the rounds."""

    mbps: float
    cpu_s_per_gb: dict[str, float]  # each service, "services" (their sum) and "client"
    services_cpu_per_round: list[float]
    services_cpu_vs_first: float  # median of the per-round ratios to the first transport


def _round(k: int, transports: list[str], work: Path, input_path: Path, size: int,
           sha: str) -> TransportRound:
    shift = (k - 1) % len(transports)
    out = TransportRound(k, transports[shift:] + transports[:shift], {})
    for name in out.order:
        os.sync()
        root = work / f"round-{k}-{name}"
        try:
            out.runs[name] = run_ours(root, input_path, size, sha, request_bytes=256 * MiB,
                                      chunk_size=DEFAULT_CHUNK_SIZE, extra_env={
                                          "LUCID_HTTP_TRANSPORT": name}).paths["raw"]
        finally:
            shutil.rmtree(root, ignore_errors=True)
        steps = out.runs[name].steps()
        line = "  ".join(f"{s} {steps[s].cpu_s['services'] / (size / GB):.2f} CPU s/GB "
                         f"{size / MB / steps[s].wall_s:.0f} MB/s" for s in STEPS)
        print(f"round {k} {name:8} {line}", flush=True)
    return out


def summarize(rounds: list[TransportRound], transports: list[str],
              size: int) -> dict[str, dict[str, TransportStep]]:
    """Return per transport and step the medians and the paired ratios to the first transport."""
    gb, base = size / GB, transports[0]
    summary: dict[str, dict[str, TransportStep]] = {}
    for name in transports:
        per: dict[str, TransportStep] = {}
        for step in STEPS:
            runs = [r.runs[name].steps()[step] for r in rounds]
            firsts = [r.runs[base].steps()[step] for r in rounds]
            per[step] = TransportStep(
                mbps=statistics.median(size / MB / x.wall_s for x in runs),
                cpu_s_per_gb={k: statistics.median(x.cpu_s[k] / gb for x in runs)
                              for k in (*SERVICES, "services", "client")},
                services_cpu_per_round=[round(x.cpu_s["services"] / gb, 3) for x in runs],
                services_cpu_vs_first=statistics.median(
                    x.cpu_s["services"] / y.cpu_s["services"] for x, y in zip(runs, firsts,
                                                                              strict=True)))
        summary[name] = per
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transports", default="wire,httpx")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    transports = args.transports.split(",")
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="lucid-transport-ab-"))
    try:
        input_path = work / "input.bin"
        sha = write_input(input_path, size)
        rounds = [_round(k, transports, work, input_path, size, sha)
                  for k in range(1, args.rounds + 1)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(rounds, transports, size)
    for name in transports:
        for step in STEPS:
            s = summary[name][step]
            cpu = s.cpu_s_per_gb
            print(f"{name:8} {step:7} {s.mbps:6.0f} MB/s  services {cpu['services']:.2f} "
                  f"CPU s/GB (api {cpu['api']:.2f}, processor {cpu['processor']:.2f}, storage "
                  f"{cpu['storage']:.2f})  x{s.services_cpu_vs_first:.3f} "
                  f"rounds {s.services_cpu_per_round}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "size": size, "rounds": [asdict(r) for r in rounds],
            "summary": {n: {k: asdict(v) for k, v in per.items()} for n, per in summary.items()},
        }, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
