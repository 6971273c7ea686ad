"""The end-to-end benchmark runs on a tiny input (no rivals) and reports sane numbers."""

from __future__ import annotations

import json
import pathlib

import pytest

from bench.core import make_input
from bench.e2e import SERVICES, iter_input, main


def test_e2e_input_is_bench_core_input() -> None:
    for size in (1, 3 * 1024 * 1024 + 7, 9 * 1024 * 1024):
        assert b"".join(iter_input(size)) == make_input(size), size


@pytest.mark.e2e  # starts the three services as real processes
def test_e2e_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "e2e.json"
    result = main(["--size-mib", "4", "--rounds", "1", "--no-rivals", "--request-mib", "2",
                   "--chunk-size", "1M",
                   "--ref-mib", "4", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert result["ok"], result["failed_rounds"]
    assert result["rivals_run"] == []
    (round_,) = result["rounds"]
    ours = round_["ours"]
    assert ours["replay"]["sha256_ok"]
    assert ours["replay"]["sha256"] == result["config"]["input_sha256"]
    assert ours["verify"]["ok"]
    assert ours["session"]["chunk_count"] == 4 and ours["session"]["requests"] == 2
    assert not ours["log_tracebacks"]

    s = result["summary"]
    for key in ("ours_ingest", "ours_upload_only", "ours_replay", "ours_verify"):
        assert s["mbps"][key] > 0, key
    for step in ("ingest", "replay", "verify"):
        for who in (*SERVICES, "services"):
            assert s["cpu_s_per_gb"][step][who] >= 0, (step, who)
        assert s["cpu_s_per_gb"][step]["services"] > 0, step
    for name in SERVICES:
        assert 10 < s["peak_rss_mb"][name]["after_ingest_max"] < 10_000, name
    assert 0.1 < s["stored_over_input"]["ours"] < 1.2
    for key in ("zstd_mbps", "aes_gcm_mbps", "sha256_mbps", "serial_limit_mbps",
                "core_pipeline_mbps"):
        assert s["reference"][key] > 0, key
    statuses = {t["target"]: t["status"] for t in result["targets"]}
    assert len(statuses) == 6
    assert all(v.startswith(("PASS", "MISS", "n/a")) for v in statuses.values())
    assert result["machine"]["python"]

    written = json.loads(out.read_text())
    assert set(written) >= {"machine", "config", "rivals_run", "rounds", "failed_rounds",
                            "summary", "targets", "ok"}
    assert written["summary"]["mbps"] == s["mbps"]
    assert not (tmp_path / "work" / "round-1").exists()  # cleaned up without --keep
