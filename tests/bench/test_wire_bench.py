"""bench/transport_ab.py's summary: medians per transport, and ratios paired by round."""

from __future__ import annotations

import pytest

from bench.measure import GB, PathRun, Replayed, StepRun
from bench.transport_ab import STEPS, TransportRound, summarize


def _run(ingest: float, replay: float, verify: float) -> PathRun:
    def step(cpu: float) -> StepRun:
        return StepRun(2.0, {"api": cpu / 4, "processor": cpu / 2, "storage": cpu / 4,
                             "services": cpu, "client": 0.1})
    return PathRun(step(ingest), step(replay), Replayed(1, "00", True), verify=step(verify))


def test_the_summary_pairs_each_round() -> None:
    size = GB  # CPU seconds read as CPU s/GB
    rounds = [TransportRound(1, ["wire", "httpx"], {"wire": _run(1.0, 3.0, 2.0),
                                                    "httpx": _run(3.0, 6.0, 2.0)}),
              TransportRound(2, ["httpx", "wire"], {"wire": _run(2.0, 3.0, 2.0),
                                                    "httpx": _run(1.0, 3.3, 2.2)}),
              TransportRound(3, ["wire", "httpx"], {"wire": _run(3.0, 4.0, 2.0),
                                                    "httpx": _run(2.5, 4.0, 1.8)})]
    s = summarize(rounds, ["wire", "httpx"], size)
    assert set(s["wire"]) == set(STEPS)
    assert s["wire"]["ingest"].cpu_s_per_gb["services"] == 2.0
    assert s["httpx"]["ingest"].cpu_s_per_gb["processor"] == pytest.approx(1.25)
    # the median of the rounds' ratios (3, 0.5, 0.83), not the ratio of the medians (2.5 / 2)
    assert s["httpx"]["ingest"].services_cpu_vs_first == pytest.approx(2.5 / 3)
    assert s["httpx"]["replay"].services_cpu_vs_first == pytest.approx(1.1)
    assert s["httpx"]["verify"].services_cpu_per_round == [2.0, 2.2, 1.8]
    assert s["wire"]["verify"].mbps == pytest.approx(GB / 1e6 / 2.0)
