"""docs/format.md's manifest and checkpoint sections are checked against the code.

The blocks are fenced with the info string `<lang> canonical:<name>`.  The worked
example must be exactly what `sessions.core` writes and must verify; the Python
rendering of the canonical-JSON rules (written without the project's code) must
agree with `Manifest.to_json` on the example and on generated manifests with
awkward labels; the key name and origin must be as the deviation note says.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessions.core import (
    ChunkEntry,
    Manifest,
    ManifestError,
    NoteVerifier,
    leaf_hash,
    open_checkpoint,
    root_hash,
)

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "format.md"
BLOCK_RE = re.compile(r"^```(\w+) canonical:([a-z_]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCKS = {name: body for _lang, name, body in BLOCK_RE.findall(DOC.read_text(encoding="utf-8"))}


def _canonical() -> Callable[[Any], bytes]:
    namespace: dict[str, Any] = {}
    exec(compile(BLOCKS["snippet"], "docs/format.md:canonical", "exec"), namespace)  # noqa: S102
    fn: Callable[[Any], bytes] = namespace["canonical"]
    return fn


canonical = _canonical()


def example_bytes() -> bytes:
    return BLOCKS["manifest"].removesuffix("\n").encode("utf-8")  # the block's own newline


def verifier() -> NoteVerifier:
    return NoteVerifier.from_key_text(BLOCKS["verifier_key"].strip())


def test_every_block_is_present() -> None:
    assert set(BLOCKS) == {"checkpoint", "verifier_key", "manifest", "contents_digest",
                           "snippet"}
    assert b"\n" not in example_bytes(), "the example manifest is one line"


def test_the_example_is_what_the_code_writes_and_it_verifies() -> None:
    data = example_bytes()
    manifest = Manifest.from_json(data)
    assert manifest.to_json() == data
    origin = f"{verifier().name}/sessions/{manifest.session_id}"
    manifest.check(verifier=verifier(), origin=origin)
    assert manifest.contents_digest().hex() == BLOCKS["contents_digest"].strip()
    assert manifest.checkpoint == BLOCKS["checkpoint"], "the checkpoint block is the manifest's"
    assert [c.leaf_hash for c in manifest.chunks] == [
        leaf_hash(b"sealed chunk 0"), leaf_hash(b"sealed chunk 1")]


def test_key_name_and_origin_are_as_documented() -> None:
    """One key name per node; the origin names the session (the documented deviation)."""
    manifest = Manifest.from_json(example_bytes())
    signed = BLOCKS["checkpoint"].encode("utf-8")
    cp = open_checkpoint(signed, verifier=verifier(),
                         origin=f"lucid-node/sessions/{manifest.session_id}")
    assert verifier().name == "lucid-node" != cp.origin
    assert signed.decode().splitlines()[-1].startswith("— lucid-node ")
    assert cp.extensions == (f"lucid-manifest-sha256 {BLOCKS['contents_digest'].strip()}",)


def test_the_documented_rules_reproduce_the_example() -> None:
    data = example_bytes()
    assert canonical(json.loads(data)) == data
    assert not data.endswith(b"\n") and b": " not in data and b", " not in data


@pytest.mark.parametrize("mutation", [
    lambda d: d + b"\n",
    lambda d: d.replace(b'"chunk_count":2,', b'"chunk_count": 2,'),
    lambda d: d.replace(b'{"checkpoint"', b'{"zstd_level":2,"checkpoint"', 1),
    lambda d: d.replace(b'"zo\xc3\xab"', b'"zo\\u00eb"'),
    lambda d: d.replace(b'"format_version":1', b'"format_version":1.0'),
    lambda d: d.replace(b"d82adb35", b"D82ADB35"),
], ids=["trailing-newline", "space", "duplicate-key", "escaped-non-ascii", "float",
        "upper-hex"])
def test_what_the_rules_exclude_is_refused(mutation: Callable[[bytes], bytes]) -> None:
    changed = mutation(example_bytes())
    assert changed != example_bytes()
    with pytest.raises(ManifestError):
        Manifest.from_json(changed)


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # control chars, quotes, U+2028 ...


@settings(max_examples=200, deadline=None)
@given(labels=st.dictionaries(_TEXT, _TEXT, max_size=5),
       lengths=st.lists(st.integers(1, 1 << 24), min_size=0, max_size=4),
       big=st.integers(0, 1 << 70), text=_TEXT)
def test_the_documented_rules_agree_with_the_code(labels: dict[str, str], lengths: list[int],
                                                  big: int, text: str) -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(len(lengths))]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    chunks = tuple(ChunkEntry(index=i, offset=offsets[i], length=n, sealed_length=n + 48,
                              leaf_hash=leaves[i], compressed=i % 2 == 0)
                   for i, n in enumerate(lengths))
    manifest = dataclasses.replace(
        Manifest.from_json(example_bytes()), labels=labels, chunks=chunks,
        chunk_count=len(chunks), plaintext_size=sum(lengths), sealed_size=big,
        root_hash=root_hash(leaves), checkpoint=text)
    data = manifest.to_json()
    assert canonical(json.loads(data)) == data
    assert Manifest.from_json(data) == manifest
