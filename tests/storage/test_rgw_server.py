"""The radosgw fixture's own rules: it names what is missing, and skips loudly unless
LUCID_REQUIRE_RGW=1 makes that a failure (the suite on radosgw is in
test_chunkstore_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.rgw_server import BINARIES, REQUIRE_ENV, _unavailable, missing_binaries


def test_missing_programs_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing_binaries() == list(BINARIES)


def test_unavailable_skips_loudly_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="radosgw UNAVAILABLE.*SKIPPED: no ceph-mon"):
        _unavailable("no ceph-mon")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"SKIPPED: no ceph-mon.*{REQUIRE_ENV}=1"):
        _unavailable("no ceph-mon")
