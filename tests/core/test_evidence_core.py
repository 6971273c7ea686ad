"""sessions.core's evidence pieces: the audit chain (vectors under tests/core/vectors/audit/),
signing-key periods (which key signed a note), and the evidence bundle's index.

Each audit vector is named after the mutation it makes and carries the error it must
raise (or none).  A naive reference recomputes the chain by hand from the JSON.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.core import (
    AUDIT_GENESIS,
    AuditEntry,
    AuditError,
    BundleError,
    BundleIndex,
    Checkpoint,
    KeyMaterialError,
    KeyPeriod,
    NoteSigner,
    UnknownKeyError,
    audit_head,
    audit_origin,
    bundle_chunk_name,
    key_history_from_json,
    open_checkpoint,
    sign_checkpoint,
    sign_note,
    signing_period,
    verify_audit_log,
)

VECTOR_DIR = pathlib.Path(__file__).parent / "vectors" / "audit"


def load_vectors() -> list[Any]:
    paths = sorted(VECTOR_DIR.glob("*.json"))
    assert paths, f"no vectors under {VECTOR_DIR}"
    return [pytest.param(json.loads(p.read_text("utf-8")), id=p.stem) for p in paths]


def _naive_hash(d: dict[str, Any]) -> bytes:
    """The entry hash spelled out: SHA-256(0x00 ‖ sorted compact ASCII JSON with v=1)."""
    body = json.dumps({"v": 1, **d}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"\x00" + body.encode("ascii")).digest()


@pytest.mark.parametrize("vector", load_vectors())
def test_audit_vectors(vector: dict[str, Any]) -> None:
    entries = [AuditEntry.from_json(d) for d in vector["entries"]]
    for d, e in zip(vector["entries"], entries, strict=True):
        assert e.hash() == _naive_hash(d)
    cp = Checkpoint("lucid-test/audit", vector["checkpoint_size"],
                    bytes.fromhex(vector["checkpoint_root"]))
    if vector["want_error"] is None:
        verify_audit_log(entries, checkpoint=cp)
        return
    with pytest.raises(AuditError) as err:
        verify_audit_log(entries, checkpoint=cp)
    assert any(vector["want_error"] in f for f in err.value.findings), err.value.findings


def _chain(n: int) -> list[AuditEntry]:
    out, prev = [], AUDIT_GENESIS
    for i in range(n):
        e = AuditEntry(seq=i, at="2026-12-02T00:00:00Z", action="append", actor="t",
                       client="::1", session_id=None, detail=str(i), prev=prev)
        out.append(e)
        prev = e.hash()
    return out


@given(st.integers(0, 12), st.data())
def test_any_single_edit_of_a_signed_log_is_detected(n: int, data: st.DataObject) -> None:
    entries = _chain(n)
    cp = Checkpoint("x/audit", n, audit_head(entries))
    verify_audit_log(entries, checkpoint=cp)
    if n == 0:
        return
    i = data.draw(st.integers(0, n - 1))
    how = data.draw(st.sampled_from(["edit", "remove", "truncate"]))
    if how == "edit":
        changed = AuditEntry(**{**entries[i].__dict__, "detail": "forged"})
        tampered = [*entries[:i], changed, *entries[i + 1:]]
    elif how == "remove":
        tampered = [*entries[:i], *entries[i + 1:]]
    else:
        tampered = entries[:i]
    with pytest.raises(AuditError):
        verify_audit_log(tampered, checkpoint=cp)


def test_the_audit_head_is_a_signed_checkpoint() -> None:
    signer = NoteSigner.generate("lucid-test")
    entries = _chain(3)
    signed = sign_checkpoint(Checkpoint(audit_origin("lucid-test"), 3, audit_head(entries)),
                             signer)
    cp = open_checkpoint(signed, verifier=signer.verifier(), origin="lucid-test/audit")
    verify_audit_log(entries, checkpoint=cp)


@pytest.mark.parametrize("bad", [
    {"seq": -1}, {"prev": "00" * 31}, {"action": "Drop Table"}, {"actor": "a\nb"},
    {"detail": "x" * 257}, {"session": 5}])
def test_malformed_entries_are_refused(bad: dict[str, Any]) -> None:
    good = _chain(1)[0].to_json()
    with pytest.raises(AuditError):
        AuditEntry.from_json(good | bad)


# -- signing-key periods -------------------------------------------------------------------

def test_the_period_of_the_signing_key_is_picked_among_cosignatures() -> None:
    old, new = NoteSigner.generate("node"), NoteSigner.generate("node")
    witness = NoteSigner.generate("witness.example")
    history = key_history_from_json([
        {"verifier_key": old.verifier().key_text(), "not_after": "2026-06-01T00:00:00Z"},
        {"verifier_key": new.verifier().key_text(), "not_before": "2026-06-01T00:00:00Z"}])
    note = sign_note("node/sessions/x\n1\n" + "A" * 43 + "=\n", witness, old)
    assert signing_period(note, history) == history[0]
    assert signing_period(sign_note("t\n", new), history).not_before == "2026-06-01T00:00:00Z"
    with pytest.raises(UnknownKeyError):
        signing_period(sign_note("t\n", witness), history)


@pytest.mark.parametrize("bad", [None, {}, [{"verifier_key": "nope"}], [{"not_before": "x"}],
                                 [{"verifier_key": NoteSigner.generate("n").verifier()
                                   .key_text(), "not_after": 5}]])
def test_malformed_key_histories_are_refused(bad: Any) -> None:
    with pytest.raises(KeyMaterialError):
        key_history_from_json(bad)


# -- the bundle index ----------------------------------------------------------------------

def test_bundle_index_round_trips() -> None:
    key = NoteSigner.generate("node").verifier().key_text()
    index = BundleIndex(session_id="01HF7YAT00KA68J0FJ9R690X42", chunk_count=3,
                        exported_at="2026-12-02T00:00:00Z", key_name="node",
                        key_history=(KeyPeriod(key, compromised_after="2026-12-01T00:00:00Z"),))
    assert BundleIndex.from_json(index.to_json()) == index
    assert bundle_chunk_name(7) == "chunks/0000000007.lcs"


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"format": "zip"}',
                                 b'{"format": "lucid-evidence-bundle/1"}',
                                 b'{"format": "lucid-evidence-bundle/1", "session_id": "s", '
                                 b'"chunk_count": -1, "exported_at": "t", '
                                 b'"node": {"key_name": "n", "key_history": []}}'])
def test_malformed_bundle_indexes_are_refused(raw: bytes) -> None:
    with pytest.raises(BundleError):
        BundleIndex.from_json(raw)
