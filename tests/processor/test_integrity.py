"""The processor's metadata checks, without I/O: anchors, consistency, findings, resolution.

The e2e tamper suite (tests/e2e/test_tamper_metadata.py) runs the same checks
against real processes and a real SQLite file; these pin the rules down one by one.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.common.errors import MetadataCorrupt
from sessions.core import (
    CIPHER_NAME,
    Checkpoint,
    CoreError,
    Manifest,
    NoteSigner,
    root_hash,
    sign_checkpoint,
)
from sessions.processor.integrity import (
    Anchor,
    Finding,
    anchor_or_finding,
    extends,
    labels_extension,
    manifest_findings,
    open_anchor,
    require_extends,
    resolve_leaves,
    row_fact_findings,
    session_findings,
    sizes_extension,
)
from sessions.processor.readback import ChunkFacts
from sessions.processor.storage_client import ChunkRow, SessionRow

SIGNER = NoteSigner.generate("lucid-test")
OTHER = NoteSigner.generate("lucid-test")
ORIGIN = "lucid-test/sessions/01JDZ0Q3W6Y8E2V7K4N5P9R1ST"


def leaf(i: int) -> bytes:
    return hashlib.sha256(b"leaf %d" % i).digest()


def anchor(leaves: list[bytes], *extensions: str) -> Anchor:
    signed = sign_checkpoint(Checkpoint(ORIGIN, len(leaves), root_hash(leaves), extensions),
                             SIGNER)
    return open_anchor(signed, verifier=SIGNER.verifier(), origin=ORIGIN)


def rows_of(leaves: list[bytes], length: int = 10) -> list[ChunkRow]:
    return [ChunkRow(index=i, offset=i * length, length=length, sealed_length=length + 48,
                     leaf_hash=h, compressed=False) for i, h in enumerate(leaves)]


def record(rows: list[ChunkRow], **overrides: object) -> SessionRow:
    raw = {"id": "01JDZ0Q3W6Y8E2V7K4N5P9R1ST", "state": "recording", "labels": {"user": "a"},
           "created_at": "2025-11-27T12:00:00.000000Z", "offset": sum(r.length for r in rows),
           "chunk_count": len(rows), "sealed_bytes": sum(r.sealed_length for r in rows),
           "chunk_size": 10, "zstd_level": 2, "format_version": 1, "root_hash": None,
           "updated_at": "2025-11-27T12:00:00.000000Z", "retention_days": None,
           "wrapped_key": None}
    return SessionRow.model_validate(raw | overrides)


def facts_of(leaves: list[bytes], length: int = 10) -> dict[int, ChunkFacts]:
    return {i: ChunkFacts(i, h, length + 48, length, False, True) for i, h in enumerate(leaves)}


LEAVES = [leaf(i) for i in range(7)]


# -- anchors ------------------------------------------------------------------------------

def test_an_anchor_carries_its_sizes_and_labels() -> None:
    a = anchor(LEAVES[:3], sizes_extension(30, 174), labels_extension({"user": "a"}))
    assert (a.size, a.plaintext_size, a.sealed_size) == (3, 30, 174)
    assert a.labels_line == labels_extension({"user": "a"}) and not a.final


def test_an_anchor_signed_by_another_key_is_a_finding_not_an_anchor() -> None:
    signed = sign_checkpoint(Checkpoint(ORIGIN, 1, leaf(0)), OTHER)
    with pytest.raises(CoreError):
        open_anchor(signed, verifier=SIGNER.verifier(), origin=ORIGIN)
    got, finding = anchor_or_finding(signed, verifier=SIGNER.verifier(), origin=ORIGIN)
    assert got is None and finding is not None and finding.what == "checkpoint"
    assert anchor_or_finding(None, verifier=SIGNER.verifier(), origin=ORIGIN) == (None, None)


def test_labels_lines_do_not_depend_on_order() -> None:
    assert labels_extension({"a": "1", "b": "2"}) == labels_extension({"b": "2", "a": "1"})
    assert labels_extension({"a": "1"}) != labels_extension({"a": "2"})


# -- consistency with the anchor ---------------------------------------------------------------

@given(old=st.integers(0, 7), new=st.integers(0, 7))
def test_stored_leaves_extend_their_own_prefix(old: int, new: int) -> None:
    assert extends(LEAVES[:new], anchor(LEAVES[:old])) is (old <= new)


@pytest.mark.parametrize("edited", range(5))
def test_an_edited_leaf_inside_the_anchor_breaks_consistency(edited: int) -> None:
    stored = list(LEAVES)
    stored[edited] = leaf(99)
    assert not extends(stored, anchor(LEAVES[:5]))
    with pytest.raises(MetadataCorrupt) as info:
        require_extends(stored, anchor(LEAVES[:5]))
    assert info.value.extra == {"chunk_count": 7, "signed_size": 5}


def test_an_edited_leaf_after_the_anchor_is_beyond_what_was_signed() -> None:
    stored = list(LEAVES)
    stored[6] = leaf(99)
    assert extends(stored, anchor(LEAVES[:5]))


def test_no_anchor_is_accepted_only_without_chunks() -> None:
    require_extends([], None)
    with pytest.raises(MetadataCorrupt):
        require_extends(LEAVES[:1], None)


# -- telling row damage from chunk damage -------------------------------------------------------

def test_a_forged_row_is_named_by_the_chunks_bytes() -> None:
    stored = list(LEAVES)
    stored[3] = leaf(99)
    resolved = resolve_leaves(stored, anchor(LEAVES), facts_of(LEAVES))
    assert resolved is not None
    trusted, named = resolved
    assert trusted == LEAVES and named == [Finding("leaf_hash", 3, named[0].detail)]


def test_a_forged_row_and_an_altered_chunk_elsewhere_are_told_apart() -> None:
    stored = list(LEAVES)
    stored[5] = leaf(99)  # row damage
    facts = facts_of(LEAVES)
    facts[1] = dataclasses.replace(facts[1], leaf=leaf(98))  # chunk damage
    resolved = resolve_leaves(stored, anchor(LEAVES), facts)
    assert resolved is not None
    trusted, named = resolved
    assert trusted == LEAVES and [f.index for f in named] == [5]


def test_row_and_chunk_both_wrong_at_one_index_cannot_be_resolved() -> None:
    stored = list(LEAVES)
    stored[2] = leaf(99)
    facts = facts_of(LEAVES)
    facts[2] = dataclasses.replace(facts[2], leaf=leaf(98))
    assert resolve_leaves(stored, anchor(LEAVES), facts) is None


def test_a_sample_that_misses_the_forged_row_cannot_name_it() -> None:
    stored = list(LEAVES)
    stored[4] = leaf(99)
    facts = {i: f for i, f in facts_of(LEAVES).items() if i != 4}
    assert resolve_leaves(stored, anchor(LEAVES), facts) is None


def test_row_fields_are_checked_against_intact_chunks_only() -> None:
    rows = rows_of(LEAVES[:3])
    rows[1] = dataclasses.replace(rows[1], length=9, compressed=True)
    rows[2] = dataclasses.replace(rows[2], sealed_length=1)
    facts = facts_of(LEAVES[:3])
    found = row_fact_findings(rows, facts, LEAVES[:3])
    assert {(f.what, f.index) for f in found} == {("length", 1), ("compressed", 1),
                                                  ("sealed_length", 2)}
    facts[2] = dataclasses.replace(facts[2], leaf=leaf(98))  # an altered chunk proves nothing
    assert ("sealed_length", 2) not in {(f.what, f.index)
                                        for f in row_fact_findings(rows, facts, LEAVES[:3])}


# -- records -------------------------------------------------------------------------------------

def test_a_consistent_open_session_has_no_findings() -> None:
    rows = rows_of(LEAVES[:4])
    a = anchor(LEAVES[:4], sizes_extension(40, 232), labels_extension({"user": "a"}))
    assert session_findings(record(rows), rows, a) == []


@pytest.mark.parametrize(("overrides", "what"), [
    ({"offset": 41}, "offset"), ({"sealed_bytes": 1}, "sealed_bytes"),
    ({"chunk_count": 3}, "chunk_count"), ({"labels": {"user": "mallory"}}, "labels"),
])
def test_each_record_field_is_checked_against_rows_and_anchor(overrides: dict[str, object],
                                                              what: str) -> None:
    rows = rows_of(LEAVES[:4])
    a = anchor(LEAVES[:4], sizes_extension(40, 232), labels_extension({"user": "a"}))
    assert what in {f.what for f in session_findings(record(rows, **overrides), rows, a)}


def test_rows_that_are_not_contiguous_are_named() -> None:
    rows = rows_of(LEAVES[:4])
    rows[2] = dataclasses.replace(rows[2], offset=21)
    found = session_findings(record(rows), rows, None)
    assert ("offset", 2) in {(f.what, f.index) for f in found}


def _manifest(rows: list[ChunkRow]) -> Manifest:
    return Manifest(session_id="01JDZ0Q3W6Y8E2V7K4N5P9R1ST", labels={"user": "a"},
                    created_at="2025-11-27T12:00:00.000000Z", plaintext_size=40,
                    sealed_size=232, chunk_count=4, chunk_size=10, zstd_level=2,
                    cipher=CIPHER_NAME, format_version=1, chunks=tuple(rows),
                    root_hash=root_hash([r.leaf_hash for r in rows]), checkpoint="")


def test_a_completed_record_and_rows_are_compared_with_the_manifest_field_by_field() -> None:
    rows = rows_of(LEAVES[:4])
    manifest = _manifest(rows)
    row = record(rows, state="completed", root_hash=manifest.root_hash.hex())
    assert manifest_findings(row, rows, manifest) == []
    forged = list(rows)
    forged[1] = dataclasses.replace(forged[1], leaf_hash=leaf(99), offset=11)
    row = record(rows, state="completed", root_hash="00" * 32, labels={})
    found = {(f.what, f.index) for f in manifest_findings(row, forged[:3], manifest)}
    assert found == {("root_hash", None), ("labels", None), ("leaf_hash", 1), ("offset", 1),
                     ("chunk_row", 3)}
