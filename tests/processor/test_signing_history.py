"""The processor's signing-key history: recorded at start, extended by rotation, never rewound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessions.common.errors import KeyRotationRefused
from sessions.common.secrets import ConfigError
from sessions.core import NoteSigner, sign_note
from sessions.processor.config import Settings
from sessions.processor.keys import load_node_keys, rotate_signing_key
from sessions.processor.keys.signing import history_path, read_history, record_signing_key


def _local(tmp_path: Path) -> Settings:
    return Settings(mode="local", data_dir=tmp_path, node_name="lucid-hist")


def test_first_start_records_the_key_and_a_restart_changes_nothing(tmp_path: Path) -> None:
    settings = _local(tmp_path)
    keys = load_node_keys(settings)
    assert [p.verifier_key for p in keys.history] == [keys.verifier.key_text()]
    assert keys.history[0].not_before is None and keys.history[0].not_after is None
    before = history_path(settings).read_text()
    assert load_node_keys(settings).history == keys.history
    assert history_path(settings).read_text() == before


def test_rotation_retires_the_old_key_and_verifies_with_either(tmp_path: Path) -> None:
    settings = _local(tmp_path)
    keys = load_node_keys(settings)
    rotated = rotate_signing_key(settings, keys, compromised_after="2026-12-01T00:00:00Z")
    old, new = rotated.history
    assert old.verifier_key == keys.verifier.key_text() and old.not_after is not None
    assert old.compromised_after == "2026-12-01T00:00:00Z"
    assert new.verifier_key == rotated.verifier.key_text() != old.verifier_key
    assert read_history(history_path(settings)) == rotated.history
    restarted = load_node_keys(settings)  # the new key file was written: it is current
    assert restarted.verifier == rotated.verifier and restarted.history == rotated.history
    assert restarted.verifier_of(sign_note("x\n", keys.signer)) == keys.verifier
    assert restarted.verifier_of(sign_note("x\n", rotated.signer)) == rotated.verifier


def test_a_replaced_key_file_opens_a_new_period_and_an_old_key_is_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    a, b = NoteSigner.generate("n").verifier(), NoteSigner.generate("n").verifier()
    record_signing_key(path, a, now="2026-01-01T00:00:00Z")
    history = record_signing_key(path, b, now="2026-02-01T00:00:00Z")
    assert [(p.not_before, p.not_after) for p in history] == [
        (None, "2026-02-01T00:00:00Z"), ("2026-02-01T00:00:00Z", None)]
    with pytest.raises(ConfigError, match="retired key"):
        record_signing_key(path, a, now="2026-03-01T00:00:00Z")
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ConfigError, match="malformed"):
        read_history(path)


def test_a_file_managed_key_is_not_rotated_through_the_api(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_text(NoteSigner.generate("lucid-hist").key_text())
    settings = Settings(mode="local", data_dir=tmp_path, signing_key_file=key)
    with pytest.raises(KeyRotationRefused):
        rotate_signing_key(settings, load_node_keys(settings), compromised_after=None)


def test_an_unwritable_history_is_published_all_the_same(tmp_path: Path) -> None:
    """No writable place (the containers' read-only root): the processor starts all the same."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # mkdir under a file fails, for root too
    key = NoteSigner.generate("n").verifier()
    history = record_signing_key(blocker / "history.json", key, now="2026-01-01T00:00:00Z")
    assert [p.verifier_key for p in history] == [key.key_text()]
