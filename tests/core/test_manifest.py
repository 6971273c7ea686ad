"""The manifest: one canonical JSON, strict parsing, consistency checks, offset lookup.

Roots are computed with the naive RFC 9162 reference (tests/core/merkle_reference.py)
from raw leaf data, so `check()` is cross-checked against code it shares
nothing with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from merkle_reference import mth

from sessions.core import (
    Checkpoint,
    CheckpointError,
    ChunkEntry,
    Manifest,
    ManifestError,
    NoteSigner,
    NoVerifiedSignatureError,
    sign_checkpoint,
)
from sessions.core._manifest import CIPHER

SIGNER = NoteSigner.generate("example.com/node")
SID = "0f3a9c2e"
ORIGIN = f"example.com/node/sessions/{SID}"


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def build(lengths: list[int], *, chunk_size: int = 10, **overrides: Any) -> Manifest:
    """Return a consistent manifest with chunks of `lengths`, signed by SIGNER."""
    datas = [f"chunk-{i}".encode() for i in range(len(lengths))]
    chunks, offset = [], 0
    for i, (length, data) in enumerate(zip(lengths, datas, strict=True)):
        chunks.append(ChunkEntry(i, offset, length, length + 29, _leaf(data), i % 2 == 0))
        offset += length
    root = mth(datas)
    fields: dict[str, Any] = dict(
        session_id=SID, labels={"team": "blue", "host": "ws-7"},
        created_at="2024-05-01T12:00:00.123456Z", plaintext_size=offset,
        sealed_size=sum(c.sealed_length for c in chunks), chunk_count=len(chunks),
        chunk_size=chunk_size, zstd_level=3, cipher=CIPHER, format_version=1,
        chunks=tuple(chunks), root_hash=root, checkpoint="",
    )  # fmt: skip
    unsigned = Manifest(**(fields | overrides))
    if "checkpoint" in overrides:
        return unsigned
    cp = Checkpoint(ORIGIN, len(chunks), root, (unsigned.checkpoint_extension(),))
    return dataclasses.replace(unsigned, checkpoint=sign_checkpoint(cp, SIGNER).decode())


GOOD = build([10, 10, 4, 10, 1])


# -- canonical JSON -------------------------------------------------------------


def test_canonical_layout() -> None:
    m = build([3], chunk_size=4, labels={"é": "ü", "a": "b"}, checkpoint="cp")
    leaf, root = m.chunks[0].leaf_hash.hex(), m.root_hash.hex()
    expected = (
        '{"checkpoint":"cp","chunk_count":1,"chunk_size":4,"chunks":[{"compressed":true,'
        f'"index":0,"leaf_hash":"{leaf}","length":3,"offset":0,"sealed_length":32}}],'
        '"cipher":"AES-256-GCM","created_at":"2024-05-01T12:00:00.123456Z",'
        '"format_version":1,"labels":{"a":"b","é":"ü"},"manifest_version":1,'
        f'"plaintext_size":3,"root_hash":"{root}","sealed_size":32,'
        f'"session_id":"{SID}","zstd_level":3}}'
    )
    assert m.to_json() == expected.encode("utf-8")


def test_round_trip_is_byte_identical() -> None:
    data = GOOD.to_json()
    again = Manifest.from_json(data)
    assert again == GOOD
    assert again.to_json() == data


def test_key_order_independence() -> None:
    fields = {f.name: getattr(GOOD, f.name) for f in dataclasses.fields(Manifest)}
    names = list(fields)
    rng = random.Random(9162)  # noqa: S311 - a seeded, reproducible shuffle
    for _ in range(5):
        rng.shuffle(names)
        labels = list(GOOD.labels.items())
        rng.shuffle(labels)
        shuffled = {n: fields[n] for n in names} | {"labels": dict(labels)}
        assert Manifest(**shuffled).to_json() == GOOD.to_json()
    # And in the JSON itself: a reordered document is not canonical.
    obj = json.loads(GOOD.to_json())
    reordered = json.dumps(dict(reversed(obj.items())), separators=(",", ":"), ensure_ascii=False)
    assert json.loads(reordered) == obj
    with pytest.raises(ManifestError):
        Manifest.from_json(reordered.encode())


def test_labels_are_frozen_copies() -> None:
    labels = {"b": "2", "a": "1"}
    m = build([1], labels=labels)
    labels["c"] = "3"
    assert dict(m.labels) == {"a": "1", "b": "2"} and list(m.labels) == ["a", "b"]
    with pytest.raises(TypeError):
        m.labels["d"] = "4"  # type: ignore[index]


def test_empty_session() -> None:
    m = build([])
    assert m.root_hash == hashlib.sha256(b"").digest()
    m.check(verifier=SIGNER.verifier(), origin=ORIGIN)
    assert Manifest.from_json(m.to_json()) == m
    assert json.loads(m.to_json())["chunks"] == []


def _mutated(edit: Any) -> bytes:
    obj = json.loads(GOOD.to_json())
    edit(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _set(path: str, value: Any) -> Any:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = (int(p) if p.isdigit() else p for p in path.split("."))
        node: Any = obj
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


BAD_JSON = {
    "pretty-printed": json.dumps(json.loads(GOOD.to_json()), indent=1).encode(),
    "trailing-newline": GOOD.to_json() + b"\n",
    "leading-space": b" " + GOOD.to_json(),
    "ascii-escaped": json.dumps(
        json.loads(build([1], labels={"k": "é"}).to_json()), sort_keys=True, separators=(",", ":")
    ).encode(),
    "upper-case-hex": GOOD.to_json().replace(
        GOOD.root_hash.hex().encode(), GOOD.root_hash.hex().upper().encode()
    ),
    "duplicate-key": GOOD.to_json()[:-1] + b',"zstd_level":3}',
    "not-json": b"{",
    "not-utf8": b'{"\xff":1}',
    "utf16": GOOD.to_json().decode().encode("utf-16"),
    "array": b"[]",
    "missing-field": _mutated(lambda o: o.pop("sealed_size")),
    "unknown-field": _mutated(_set("extra", 1)),
    "chunk-missing-field": _mutated(lambda o: o["chunks"][0].pop("compressed")),
    "chunk-unknown-field": _mutated(_set("chunks.0.extra", 1)),
    "chunk-not-object": _mutated(_set("chunks.0", 1)),
    "chunks-not-list": _mutated(_set("chunks", {})),
    "float-size": _mutated(_set("plaintext_size", 35.0)),
    "bool-size": _mutated(_set("chunk_count", True)),
    "string-size": _mutated(_set("chunk_count", "5")),
    "null-checkpoint": _mutated(_set("checkpoint", None)),
    "int-compressed": _mutated(_set("chunks.0.compressed", 1)),
    "odd-hex": _mutated(_set("root_hash", "abc")),
    "spaced-hex": _mutated(_set("chunks.0.leaf_hash", "ab cd")),
    "int-label": _mutated(_set("labels.team", 1)),
    "labels-list": _mutated(_set("labels", [])),
    "nan": GOOD.to_json().replace(b'"zstd_level":3', b'"zstd_level":NaN'),
    "lone-surrogate": _mutated(_set("session_id", "\\ud800")).replace(b"\\\\", b"\\"),
}


@pytest.mark.parametrize("data", list(BAD_JSON.values()), ids=list(BAD_JSON))
def test_from_json_rejects(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(data)


def test_constructor_checks_types() -> None:
    with pytest.raises(ManifestError):
        ChunkEntry(0, 0, 1, 1, "00" * 32, True)  # type: ignore[arg-type]
    with pytest.raises(ManifestError):
        ChunkEntry(0, 0, 1, 1, b"\x00" * 32, 1)  # type: ignore[arg-type]
    with pytest.raises(ManifestError):
        dataclasses.replace(GOOD, chunk_size=10.0)  # type: ignore[arg-type]
    with pytest.raises(ManifestError):
        dataclasses.replace(GOOD, labels={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ManifestError):
        dataclasses.replace(GOOD, chunks=(1,))  # type: ignore[arg-type]


# -- check() --------------------------------------------------------------------


def _chunk(i: int, **changes: Any) -> tuple[ChunkEntry, ...]:
    chunks = list(GOOD.chunks)
    chunks[i] = dataclasses.replace(chunks[i], **changes)
    return tuple(chunks)


INCONSISTENT = {
    "chunk-count-too-high": dict(chunk_count=6),
    "chunk-count-too-low": dict(chunk_count=4),
    "index-skipped": dict(chunks=_chunk(2, index=3)),
    "index-swapped": dict(chunks=(GOOD.chunks[1], GOOD.chunks[0], *GOOD.chunks[2:])),
    "offset-gap": dict(chunks=_chunk(2, offset=21)),
    "offset-overlap": dict(chunks=_chunk(2, offset=19)),
    "plaintext-size-off-by-one": dict(plaintext_size=GOOD.plaintext_size + 1),
    "sealed-size-off-by-one": dict(sealed_size=GOOD.sealed_size - 1),
    "empty-chunk": dict(chunks=_chunk(4, length=0), plaintext_size=GOOD.plaintext_size - 1),
    "chunk-longer-than-chunk-size": dict(chunk_size=9),
    "zero-sealed-length": dict(
        chunks=_chunk(4, sealed_length=0), sealed_size=GOOD.sealed_size - 30
    ),
    "short-leaf-hash": dict(chunks=_chunk(1, leaf_hash=GOOD.chunks[1].leaf_hash[:31])),
    "modified-leaf-hash": dict(chunks=_chunk(1, leaf_hash=bytes(32))),
    "swapped-leaf-hashes": dict(
        chunks=_chunk(0, leaf_hash=GOOD.chunks[1].leaf_hash)[:1]
        + _chunk(1, leaf_hash=GOOD.chunks[0].leaf_hash)[1:]
    ),
    "modified-root-hash": dict(root_hash=bytes(32)),
    "short-root-hash": dict(root_hash=GOOD.root_hash[:31]),
    "unknown-cipher": dict(cipher="AES-128-GCM"),
    "unknown-manifest-version": dict(manifest_version=2),
    "zero-format-version": dict(format_version=0),
    "zero-chunk-size": dict(chunk_size=0),
    "empty-session-id": dict(session_id=""),
    "negative-sealed-size": dict(sealed_size=-1),
    "created-at-not-a-date": dict(created_at="yesterday"),
    "created-at-month-13": dict(created_at="2024-13-01T00:00:00Z"),
    "created-at-february-30": dict(created_at="2024-02-30T00:00:00Z"),
    "created-at-no-zone": dict(created_at="2024-05-01T12:00:00"),
    "created-at-space": dict(created_at="2024-05-01 12:00:00Z"),
    "created-at-hour-24": dict(created_at="2024-05-01T24:00:00Z"),
}


@pytest.mark.parametrize("changes", list(INCONSISTENT.values()), ids=list(INCONSISTENT))
def test_check_rejects(changes: dict[str, Any]) -> None:
    bad = dataclasses.replace(GOOD, **changes)
    with pytest.raises(ManifestError):
        bad.check()
    # Inconsistent manifests still serialise canonically: an auditor can load and report them.
    assert Manifest.from_json(bad.to_json()) == bad


@pytest.mark.parametrize(
    "created_at",
    ["2024-05-01T12:00:00Z", "2024-02-29T23:59:60+05:30", "1999-12-31T00:00:00.5-08:00"],
)
def test_check_accepts_rfc3339(created_at: str) -> None:
    dataclasses.replace(GOOD, created_at=created_at).check()


def test_check_passes_on_good_and_short_chunks() -> None:
    GOOD.check()
    build([1, 10, 3]).check()
    build([10, 10, 10]).check()


def test_check_with_verifier() -> None:
    GOOD.check(verifier=SIGNER.verifier(), origin=ORIGIN)
    with pytest.raises(CheckpointError):
        GOOD.check(verifier=SIGNER.verifier(), origin=ORIGIN + "x")
    with pytest.raises(NoVerifiedSignatureError):
        GOOD.check(verifier=NoteSigner.generate("example.com/node").verifier())
    with pytest.raises(ValueError):
        GOOD.check(origin=ORIGIN)
    stale = sign_checkpoint(Checkpoint(ORIGIN, 4, GOOD.root_hash), SIGNER).decode()
    with pytest.raises(ManifestError):
        dataclasses.replace(GOOD, checkpoint=stale).check(verifier=SIGNER.verifier())


def test_the_signature_covers_labels_and_chunk_entries_not_only_the_root() -> None:
    bare = sign_checkpoint(Checkpoint(ORIGIN, GOOD.chunk_count, GOOD.root_hash), SIGNER).decode()
    with pytest.raises(ManifestError, match="labels and chunk list"):
        dataclasses.replace(GOOD, checkpoint=bare).check(verifier=SIGNER.verifier())
    relabelled = dataclasses.replace(GOOD, labels={"team": "red", "host": "ws-7"})
    with pytest.raises(ManifestError, match="labels and chunk list"):
        relabelled.check(verifier=SIGNER.verifier(), origin=ORIGIN)
    later = dataclasses.replace(GOOD, created_at="2024-05-02T12:00:00.123456Z")
    with pytest.raises(ManifestError, match="labels and chunk list"):
        later.check(verifier=SIGNER.verifier(), origin=ORIGIN)
    assert GOOD.contents_digest() == dataclasses.replace(GOOD, checkpoint="x").contents_digest()


# -- chunk_for_offset -----------------------------------------------------------


def test_chunk_for_offset_edges() -> None:
    m = build([10, 10, 4, 10, 1])
    assert [m.chunk_for_offset(o) for o in (0, 9, 10, 19, 20, 23, 24, 33, 34)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 4,
    ]  # fmt: skip
    for offset in (-1, 35, 10**9):
        with pytest.raises(ValueError):
            m.chunk_for_offset(offset)
    with pytest.raises(ValueError):
        build([]).chunk_for_offset(0)


@given(lengths=st.lists(st.integers(1, 10), max_size=40), data=st.data())
def test_chunk_for_offset_matches_a_scan(lengths: list[int], data: st.DataObject) -> None:
    m = build(lengths)
    m.check()
    if not lengths:
        return
    offset = data.draw(st.integers(0, m.plaintext_size - 1))
    (expected,) = [c.index for c in m.chunks if c.offset <= offset < c.offset + c.length]
    assert m.chunk_for_offset(offset) == expected


# -- hypothesis: any manifest round-trips ---------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
_INT = st.integers(-(2**70), 2**70)
_CHUNK = st.builds(ChunkEntry, _INT, _INT, _INT, _INT, st.binary(max_size=40), st.booleans())


@given(
    st.builds(
        Manifest,
        session_id=_TEXT,
        labels=st.dictionaries(_TEXT, _TEXT, max_size=5),
        created_at=_TEXT,
        plaintext_size=_INT,
        sealed_size=_INT,
        chunk_count=_INT,
        chunk_size=_INT,
        zstd_level=_INT,
        cipher=_TEXT,
        format_version=_INT,
        chunks=st.lists(_CHUNK, max_size=5).map(tuple),
        root_hash=st.binary(max_size=40),
        checkpoint=_TEXT,
        manifest_version=_INT,
    )
)
def test_any_manifest_round_trips(m: Manifest) -> None:
    data = m.to_json()
    again = Manifest.from_json(data)
    assert again == m and again.to_json() == data


@given(lengths=st.lists(st.integers(1, 10), max_size=30))
def test_consistent_manifests_check_and_round_trip(lengths: list[int]) -> None:
    m = build(lengths)
    m.check(verifier=SIGNER.verifier(), origin=ORIGIN)
    assert Manifest.from_json(m.to_json()).to_json() == m.to_json()
