"""Checkpoints: marshal/unmarshal strictness, sign and open, hypothesis round trips.

The mutation vectors (modified origin/size/root/extension line, wrong origin,
non-canonical bodies, the real sum.golang.org checkpoint) live in
tests/core/vectors/note/ and run in test_note.py::test_vector.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.core import (
    BadSignatureError,
    Checkpoint,
    CheckpointError,
    MalformedNoteError,
    NoteSigner,
    NoVerifiedSignatureError,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from sessions.core._checkpoint import MAX_TREE_SIZE

ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
ORIGIN = "example.com/node/sessions/abc"
SIGNER = NoteSigner.generate("example.com/node")


def test_marshal_layout() -> None:
    cp = Checkpoint(ORIGIN, 42, ROOT, ("ext one", "ext two"))
    assert cp.marshal() == f"{ORIGIN}\n42\n{ROOT_B64}\next one\next two\n"
    assert Checkpoint.unmarshal(cp.marshal()) == cp


def test_sumdb_layout_from_transparency_dev() -> None:
    """transparency-dev/formats log/note_test.go: origin with spaces, real sumdb root."""
    text = "go.sum database tree\n6476701\nmb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n"
    cp = Checkpoint.unmarshal(text)
    assert (cp.origin, cp.size, cp.extensions) == ("go.sum database tree", 6476701, ())
    assert cp.marshal() == text


def test_sign_and_open() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    signed = sign_checkpoint(cp, SIGNER)
    assert signed.startswith(cp.marshal().encode() + b"\n\xe2\x80\x94 example.com/node ")
    assert open_checkpoint(signed, verifier=SIGNER.verifier(), origin=ORIGIN) == cp
    assert open_checkpoint(signed, verifier=SIGNER.verifier()) == cp


def test_origin_mismatch() -> None:
    signed = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), SIGNER)
    with pytest.raises(CheckpointError):
        open_checkpoint(signed, verifier=SIGNER.verifier(), origin=ORIGIN + "x")


def test_other_key_alone_is_not_verified() -> None:
    signed = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), NoteSigner.generate("other.example"))
    with pytest.raises(NoVerifiedSignatureError):
        open_checkpoint(signed, verifier=SIGNER.verifier(), origin=ORIGIN)


def test_cosigned_by_unknown_witness_still_opens() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    signed = sign_note(cp.marshal(), NoteSigner.generate("witness.example"), SIGNER)
    assert open_checkpoint(signed, verifier=SIGNER.verifier(), origin=ORIGIN) == cp


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace(ORIGIN, ORIGIN.upper(), 1),
        lambda s: s.replace("\n7\n", "\n8\n", 1),
        lambda s: s.replace(ROOT_B64, base64.b64encode(ROOT[::-1]).decode(), 1),
        lambda s: s.replace("ext\n", "exu\n", 1),
    ],
    ids=["origin", "size", "root", "extension"],
)
def test_modified_line_breaks_the_signature(edit: Callable[[str], str]) -> None:
    signed = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT, ("ext",)), SIGNER).decode()
    forged = edit(signed)
    assert forged != signed
    with pytest.raises(BadSignatureError):
        open_checkpoint(forged.encode(), verifier=SIGNER.verifier(), origin=ORIGIN)


def test_signature_is_checked_before_the_body() -> None:
    """A forged body that is not even a checkpoint fails as a signature, not as a body."""
    signed = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), SIGNER)
    forged = b"not a checkpoint\n" + signed[signed.index(b"\n\n") :]
    with pytest.raises(BadSignatureError):
        open_checkpoint(forged, verifier=SIGNER.verifier(), origin="elsewhere")


def test_missing_blank_line() -> None:
    signed = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), SIGNER)
    with pytest.raises(MalformedNoteError):
        open_checkpoint(signed.replace(b"\n\n", b"\n"), verifier=SIGNER.verifier())


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n7\n{ROOT_B64}",  # no final newline
        f"{ORIGIN}\n7\n",  # no root line
        f"\n7\n{ROOT_B64}\n",  # empty origin
        f"{ORIGIN}\n07\n{ROOT_B64}\n",  # leading zero
        f"{ORIGIN}\n+7\n{ROOT_B64}\n",  # sign
        f"{ORIGIN}\n-7\n{ROOT_B64}\n",
        f"{ORIGIN}\n 7\n{ROOT_B64}\n",
        f"{ORIGIN}\n7_0\n{ROOT_B64}\n",
        f"{ORIGIN}\n\u0667\n{ROOT_B64}\n",  # ARABIC-INDIC DIGIT SEVEN: int() would take it
        f"{ORIGIN}\n0x7\n{ROOT_B64}\n",
        f"{ORIGIN}\n{MAX_TREE_SIZE + 1}\n{ROOT_B64}\n",
        f"{ORIGIN}\n7\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n7\n{base64.b64encode(ROOT + b'x').decode()}\n",
        f"{ORIGIN}\n7\n{ROOT_B64.rstrip('=')}\n",  # missing padding
        f"{ORIGIN}\n7\n{ROOT_B64[:42]}{chr(ord(ROOT_B64[42]) + 1)}=\n",  # padding bits set
        f"{ORIGIN}\n7\n{ROOT_B64}\n\n",  # empty extension line
        f"{ORIGIN}\n7\n{ROOT_B64}\next\n\n",
        f"{ORIGIN}\n7\n {ROOT_B64}\n",
        "",
    ],
)
def test_unmarshal_rejects(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.unmarshal(text)


@pytest.mark.parametrize(
    "fields",
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("a\tb", 1, ROOT, ()),
        ("o", -1, ROOT, ()),
        ("o", MAX_TREE_SIZE + 1, ROOT, ()),
        ("o", True, ROOT, ()),
        ("o", 1, ROOT[:31], ()),
        ("o", 1, ROOT, ("",)),
        ("o", 1, ROOT, ("a\nb",)),
    ],
)
def test_constructor_rejects(fields: tuple[object, ...]) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(*fields)  # type: ignore[arg-type]


def test_size_bounds_are_inclusive() -> None:
    for size in (0, MAX_TREE_SIZE):
        cp = Checkpoint(ORIGIN, size, ROOT)
        assert Checkpoint.unmarshal(cp.marshal()) == cp


_LINE = st.text(st.characters(blacklist_categories=["Cs"], min_codepoint=0x20), min_size=1)


@given(
    origin=_LINE,
    size=st.integers(0, MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_LINE, max_size=4).map(tuple),
)
def test_round_trip(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> None:
    cp = Checkpoint(origin, size, root, extensions)
    assert Checkpoint.unmarshal(cp.marshal()) == cp
    signed = sign_checkpoint(cp, SIGNER)
    assert open_checkpoint(signed, verifier=SIGNER.verifier(), origin=origin) == cp
    assert open_note(signed, verifiers=[SIGNER.verifier()]).text == cp.marshal()


@given(text=st.text(st.characters(blacklist_categories=["Cs"]) | st.sampled_from("\n0=+/")))
def test_unmarshal_is_canonical(text: str) -> None:
    """Whatever unmarshal accepts, marshal writes back byte for byte."""
    try:
        cp = Checkpoint.unmarshal(text)
    except CheckpointError:
        return
    assert cp.marshal() == text
