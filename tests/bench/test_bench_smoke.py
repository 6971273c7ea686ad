"""The core benchmark runs end to end on a tiny input and reports sane numbers."""

from __future__ import annotations

import json
import pathlib

from bench.core import main


def test_core_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    result = main(["--size-mib", "4", "--rounds", "1", "--json", str(out)])
    assert [r["chunk_mib"] for r in result["rows"]] == [1, 2, 4, 8]
    for row in result["rows"]:
        for field in ("pipeline_mbps", "zstd_mbps", "aes_mbps", "sha_mbps", "limit_mbps", "ratio"):
            assert row[field] > 0, field
        assert 0 < row["payload_ratio"] <= 1.01
    assert result["min_ratio"] > 0
    assert result["recommended_chunk_mib"] in (1, 2, 4, 8)
    assert result["machine"]["python"]
    assert json.loads(out.read_text())["rows"] == result["rows"]
