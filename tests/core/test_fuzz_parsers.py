"""Property-based fuzzing of the parsers that read bytes from outside: sealed chunks, signed
notes and checkpoints, manifests.

Two properties for each parser, on random inputs and on mutations of a valid object
(bit flips, cut, inserted, replaced and duplicated byte runs, several at once):
  - it never raises anything but its documented error family (`OpenError`,
    `NoteError`, `ManifestError`; a library's `ValueError` or `KeyError` escaping is a bug);
  - it never succeeds wrongly: a mutation either fails or yields an object that is
    semantically identical to the original (the same plaintext, the same signed text,
    the same checkpoint, the same manifest bytes).

tests/core/test_sealing.py, test_note.py and test_manifest.py already cover each single
mutation by name (every header byte, every truncation, every flipped bit); this file
throws arbitrary combinations at the same parsers.  The Range parser is fuzzed with the
processor's other units.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sessions.core import (
    Checkpoint,
    CheckpointError,
    ChunkEntry,
    ChunkSealer,
    CoreError,
    HeaderError,
    Manifest,
    ManifestError,
    NoteError,
    NoteSigner,
    OpenError,
    open_checkpoint,
    open_note,
    parse_header,
    sign_checkpoint,
    sign_note,
)
from sessions.core._manifest import CIPHER

pytestmark = pytest.mark.heavy

KEY = bytes(range(32))
SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
SEALER = ChunkSealer(KEY, session_id=SID)
SIGNER = NoteSigner.generate("lucid-fuzz")
OTHER = NoteSigner.generate("lucid-fuzz-other")
ORIGIN = f"lucid-fuzz/sessions/{SID}"
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- mutations -------------------------------------------------------------------------------

_EDIT = st.tuples(st.sampled_from(["flip", "cut", "insert", "replace", "duplicate", "truncate",
                                   "extend"]),
                  st.integers(min_value=0), st.integers(min_value=0, max_value=64),
                  st.binary(min_size=1, max_size=16), st.integers(0, 7))
EDITS = st.lists(_EDIT, min_size=1, max_size=4)


def mutate(blob: bytes, edits: list[tuple[str, int, int, bytes, int]]) -> bytes:
    """Return blob after each edit: (kind, position, run length, new bytes, bit)."""
    out = bytearray(blob)
    for kind, pos, run, data, bit in edits:
        at = pos % (len(out) + 1)
        if kind == "flip" and out:
            out[pos % len(out)] ^= 1 << bit
        elif kind == "cut":
            del out[at:at + max(run, 1)]
        elif kind == "insert":
            out[at:at] = data
        elif kind == "replace":
            out[at:at + len(data)] = data
        elif kind == "duplicate":
            out[at:at] = out[at:at + max(run, 1)]
        elif kind == "truncate":
            del out[at:]
        elif kind == "extend":
            out += data
    return bytes(out)


# -- sealed chunks ---------------------------------------------------------------------------

PLAINTEXTS = [b"", b"x", b"flat colour region " * 300, bytes(range(256)) * 9]
SEALED = [bytes(SEALER.seal(p, index=i).data) for i, p in enumerate(PLAINTEXTS)]


def _open_outcome(blob: bytes, index: int) -> bytes | None:
    """Return the opened plaintext, or None on OpenError; any other exception fails."""
    try:
        return SEALER.open(blob, index=index)
    except OpenError:
        return None


@FUZZ
@given(blob=st.binary(max_size=4096), index=st.integers(0, 2**64 - 1))
def test_random_bytes_never_open(blob: bytes, index: int) -> None:
    assert _open_outcome(blob, index) is None


@FUZZ
@given(which=st.integers(0, len(SEALED) - 1), edits=EDITS)
def test_mutated_sealed_chunk_fails_or_is_unchanged(which: int,
                                                    edits: list[Any]) -> None:
    blob = mutate(SEALED[which], edits)
    opened = _open_outcome(blob, which)
    if blob == SEALED[which]:
        assert opened == PLAINTEXTS[which]
    else:
        assert opened is None, "a changed sealed chunk opened"
    scratch = bytearray(len(blob) + 16)
    try:
        again: bytes | None = bytes(SEALER.open(blob, index=which, scratch=scratch))
    except OpenError:
        again = None
    assert again == opened, "open with a scratch buffer disagrees with open"


@FUZZ
@given(blob=st.binary(max_size=64) | st.builds(mutate, st.sampled_from(SEALED), EDITS))
def test_parse_header_raises_header_error_or_round_trips(blob: bytes) -> None:
    try:
        header = parse_header(blob)
    except HeaderError:
        return
    assert header.to_bytes() == blob[:32]


# -- signed notes and checkpoints --------------------------------------------------------------

_LINE = st.text(st.characters(min_codepoint=0x20, blacklist_categories=["Cs"]), min_size=1,
                max_size=40)
CHECKPOINT = Checkpoint(ORIGIN, 12345, hashlib.sha256(b"root").digest(), ("ext one", "ext 2"))
SIGNED_CP = sign_checkpoint(CHECKPOINT, SIGNER)
SIGNED_TWICE = sign_note(CHECKPOINT.marshal(), SIGNER, OTHER)


@FUZZ
@given(blob=st.binary(max_size=600))
def test_random_bytes_are_never_a_note(blob: bytes) -> None:
    try:
        open_note(blob, verifiers=[SIGNER.verifier()])
    except NoteError:
        return
    raise AssertionError("random bytes verified as a note")


@FUZZ
@given(signed=st.sampled_from([SIGNED_CP, SIGNED_TWICE]), edits=EDITS)
def test_mutated_note_fails_or_keeps_its_signed_text(signed: bytes, edits: list[Any]) -> None:
    blob = mutate(signed, edits)
    try:
        note = open_note(blob, verifiers=[SIGNER.verifier()])
    except NoteError:
        return
    # Only the signature block may change (a duplicate line, an unknown key's line).
    assert note.text == CHECKPOINT.marshal()


@FUZZ
@given(signed=st.sampled_from([SIGNED_CP, SIGNED_TWICE]), edits=EDITS)
def test_mutated_checkpoint_fails_or_is_the_same_checkpoint(signed: bytes,
                                                            edits: list[Any]) -> None:
    blob = mutate(signed, edits)
    try:
        cp = open_checkpoint(blob, verifier=SIGNER.verifier(), origin=ORIGIN)
    except NoteError:  # CheckpointError is a NoteError
        return
    assert cp == CHECKPOINT


@FUZZ
@given(text=st.lists(_LINE, max_size=6).map(lambda ls: "".join(f"{x}\n" for x in ls))
       | st.text(max_size=200))
def test_checkpoint_unmarshal_raises_checkpoint_error_or_round_trips(text: str) -> None:
    try:
        cp = Checkpoint.unmarshal(text)
    except CheckpointError:
        return
    assert cp.marshal() == text


@FUZZ
@given(edits=EDITS)
def test_mutated_checkpoint_text_round_trips_or_fails(edits: list[Any]) -> None:
    text = mutate(CHECKPOINT.marshal().encode(), edits).decode("utf-8", errors="replace")
    try:
        cp = Checkpoint.unmarshal(text)
    except CheckpointError:
        return
    assert cp.marshal() == text


# -- manifests -----------------------------------------------------------------------------

def _manifest(lengths: list[int], labels: dict[str, str]) -> Manifest:
    chunks, offset = [], 0
    for i, length in enumerate(lengths):
        leaf = hashlib.sha256(b"\x00" + f"chunk-{i}".encode()).digest()
        chunks.append(ChunkEntry(i, offset, length, length + 48, leaf, i % 2 == 0))
        offset += length
    from sessions.core import root_hash
    root = root_hash([c.leaf_hash for c in chunks])
    unsigned = Manifest(session_id=SID, labels=labels, created_at="2026-12-01T22:00:00.000001Z",
                        plaintext_size=offset, sealed_size=sum(c.sealed_length for c in chunks),
                        chunk_count=len(chunks), chunk_size=1 << 20, zstd_level=2,
                        cipher=CIPHER, format_version=1, chunks=tuple(chunks), root_hash=root,
                        checkpoint="")
    cp = Checkpoint(ORIGIN, len(chunks), root, (unsigned.checkpoint_extension(),))
    return dataclasses.replace(unsigned, checkpoint=sign_checkpoint(cp, SIGNER).decode())


MANIFESTS = [_manifest([], {}), _manifest([1 << 20, 1 << 20, 7], {"user": "alice", "é": "ü"}),
             _manifest([5], {"host": "ws-17"})]
MANIFEST_JSON = [m.to_json() for m in MANIFESTS]


def _load_and_check(data: bytes) -> Manifest | None:
    """Return the manifest if it parses and checks against SIGNER; None on the error family."""
    try:
        manifest = Manifest.from_json(data)
    except ManifestError:
        return None
    try:
        manifest.check(verifier=SIGNER.verifier(), origin=ORIGIN)
    except (ManifestError, NoteError):
        return None
    return manifest


@FUZZ
@given(blob=st.binary(max_size=2000))
def test_random_bytes_are_never_a_manifest(blob: bytes) -> None:
    try:
        manifest = Manifest.from_json(blob)
    except ManifestError:
        return
    assert manifest.to_json() == blob  # only a canonical document parses


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@FUZZ
@given(which=st.integers(0, len(MANIFESTS) - 1), edits=EDITS)
def test_mutated_manifest_bytes_fail_or_are_unchanged(which: int, edits: list[Any]) -> None:
    blob = mutate(MANIFEST_JSON[which], edits)
    got = _load_and_check(blob)
    if got is not None:
        assert blob == MANIFEST_JSON[which], "a changed manifest parsed and checked"


@FUZZ
@given(which=st.integers(0, len(MANIFESTS) - 1), path=st.lists(st.integers(0, 50), min_size=1,
       max_size=3), value=_JSON)
def test_edited_manifest_field_never_checks(which: int, path: list[int], value: Any) -> None:
    """Re-encode the manifest canonically with one field (or nested field) replaced."""
    obj = json.loads(MANIFEST_JSON[which])
    target = obj
    for step in path[:-1]:
        keys = sorted(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys or not isinstance(target[keys[step % len(keys)]], dict | list):
            break
        target = target[keys[step % len(keys)]]
    keys = sorted(target) if isinstance(target, dict) else list(range(len(target)))
    assume(keys)
    key = keys[path[-1] % len(keys)]
    target[key] = value
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8", errors="surrogatepass")
    got = _load_and_check(data)
    if got is not None:
        assert got.to_json() == MANIFEST_JSON[which], "an edited manifest checked"


@FUZZ
@given(which=st.integers(0, len(MANIFESTS) - 1), label=st.text(max_size=8),
       value=st.text(max_size=8))
def test_manifest_with_other_labels_fails_its_checkpoint(which: int, label: str,
                                                         value: str) -> None:
    manifest = MANIFESTS[which]
    labels = dict(manifest.labels) | {label: value}
    assume(labels != dict(manifest.labels))
    try:
        edited = dataclasses.replace(manifest, labels=labels).to_json()
    except ManifestError:
        return  # a lone surrogate: not encodable, so nothing to parse
    assert _load_and_check(edited) is None


def test_the_error_families_are_core_errors() -> None:
    for family in (OpenError, NoteError, ManifestError):
        assert issubclass(family, CoreError)
