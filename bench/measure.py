"""What one round measures, as typed results: wall time, CPU seconds, peak RSS, stored bytes.

* `Stopwatch` times a step: wall seconds and the CPU seconds each watched process
  (the services, the SecantusDB server, SeaweedFS) and this process with its children (the
  client) used during it (bench/procstats.py reads /proc).
* The dataclasses below are what a round hands to bench/report.py: `StepRun` per
  step, `PathRun` per path (raw, cli), `OursRun` per profile, `RoundResult` per round.
* `run_reference`: bench/core.py's single-core primitives on a slice of the input.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench import core
from bench.procstats import cpu_seconds
from bench.rivals import RivalRun
from sessions.client.launcher import SERVICES
from sessions.core import ChunkSealer

MiB = 1 << 20
MB = 1_000_000
GB = 1_000_000_000

T = TypeVar("T")


@dataclass
class StepRun:
    """One timed step: wall seconds, and CPU seconds per process name.

    `cpu_s` holds each service, "mongo" with `--store mongo`, "seaweedfs" with
    `--chunk-store s3`, "client" (this process and its children) and "services" (the
    three services, mongo and seaweedfs together).
    """

    wall_s: float
    cpu_s: dict[str, float]


@dataclass
class Replayed:
    """What a replay gave back, checked against the input."""

    bytes: int
    sha256: str
    sha256_ok: bool


@dataclass
class Verified:
    """The gateway's verify report."""

    ok: bool
    checked: int | None
    bad_chunks: list[int] | None


@dataclass
class SessionFacts:
    """The session a raw path made."""

    id: str
    chunk_count: int
    sealed_bytes: int
    requests: int


@dataclass
class PathRun:
    """One path (raw or cli) through our services: ingest, replay and, raw only, verify."""

    ingest: StepRun
    replay: StepRun
    replayed: Replayed
    verify: StepRun | None = None
    verified: Verified | None = None
    session: SessionFacts | None = None

    def steps(self) -> dict[str, StepRun]:
        """Return the timed steps by name (ingest, replay, verify if run)."""
        out = {"ingest": self.ingest, "replay": self.replay}
        if self.verify is not None:
            out["verify"] = self.verify
        return out


@dataclass
class OursRun:
    """Our three services on one input: each path, then peak RSS and what was stored."""

    ports: dict[str, int]
    paths: dict[str, PathRun] = field(default_factory=dict)
    # bytes (VmHWM), per service and per watched server (mongo, seaweedfs: over the whole run)
    peak_rss_end: dict[str, int] = field(default_factory=dict)
    stored_bytes: int = 0
    chunk_file_bytes: int = 0
    other_stored_bytes: int = 0
    log_tracebacks: list[str] = field(default_factory=list)


@dataclass
class Reference:
    """bench/core.py's single-core figures (MB/s) over a slice of the input."""

    bytes: int
    zstd_mbps: float
    aes_gcm_mbps: float
    sha256_mbps: float
    serial_limit_mbps: float
    core_pipeline_mbps: float
    payload_ratio: float


@dataclass
class ProfileRound:
    """One profile in one round: ours and each rival that ran."""

    ours: OursRun | None = None
    rivals: dict[str, RivalRun] = field(default_factory=dict)


@dataclass
class RoundResult:
    """Every system on every profile once, in the round's order."""

    round: int
    order: list[str]
    path_order: list[str]
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    profiles: dict[str, ProfileRound] = field(default_factory=dict)
    reference: Reference | None = None


# --- timing ------------------------------------------------------------------------------------


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Stopwatch:
    """Wall time and CPU deltas of the watched processes and of the client around a step."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def _snapshot(self) -> dict[str, float]:
        snap = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["client"] = time.process_time() + _children_cpu()
        return snap

    def time(self, step: Callable[[], T]) -> tuple[T, StepRun]:
        """Run `step`; return what it returned and how long it took."""
        before, t0 = self._snapshot(), time.perf_counter()
        value = step()
        wall = time.perf_counter() - t0
        after = self._snapshot()
        cpu = {k: after[k] - before[k] for k in before}
        cpu["services"] = (sum(cpu[name] for name in SERVICES) + cpu.get("mongo", 0.0)
                           + cpu.get("seaweedfs", 0.0))
        return value, StepRun(wall, cpu)


# --- reference: bench.core's primitives on a slice of the input --------------------------------


def run_reference(data: bytes, *, chunk_size: int, zstd_level: int) -> Reference:
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
    return Reference(bytes=n, zstd_mbps=n / t_z / MB, aes_gcm_mbps=payload / t_a / MB,
                     sha256_mbps=sealed / t_s / MB, serial_limit_mbps=n / (t_z + t_a + t_s) / MB,
                     core_pipeline_mbps=n / t_pipe / MB, payload_ratio=payload / n)


def median(values: Sequence[float | None]) -> float | None:
    """Return the median of the measured values (None: none measured)."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None
