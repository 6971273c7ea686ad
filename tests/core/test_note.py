"""Signed notes: the vectors under tests/core/vectors/note/, Go interop, key texts, hypothesis.

Each vector file is named after the mutation it makes and carries a
description, its source (repo/path/commit, or null when signed here with the
published test key in `signer_key`), how to open it ("note" or "checkpoint"),
the verifier keys, and either the expected error class or the expected result.
"""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions import core
from sessions.core import (
    BadSignatureError,
    KeyMaterialError,
    MalformedNoteError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    NoVerifiedSignatureError,
    open_checkpoint,
    open_note,
    sign_note,
)
from sessions.core._note import is_valid_key_name

VECTOR_DIR = pathlib.Path(__file__).parent / "vectors" / "note"

# golang.org/x/mod sumdb/note/note_test.go @ 02c991387e35f9e4c0a9b7ce137717055f8d716d
PETER_SK = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VK = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"


def load_vectors() -> list[Any]:
    """Return every vector file as a pytest param whose id is the file's name."""
    paths = sorted(VECTOR_DIR.glob("*.json"))
    assert paths, f"no vectors under {VECTOR_DIR}"
    return [pytest.param(json.loads(p.read_text("utf-8")), id=p.stem) for p in paths]


VECTORS = load_vectors()


def _open(vector: dict[str, Any]) -> Any:
    signed = vector["signed"].encode("utf-8")
    verifiers = [NoteVerifier.from_key_text(k) for k in vector["verifier_keys"]]
    if vector["open"] == "checkpoint":
        (verifier,) = verifiers
        return open_checkpoint(signed, verifier=verifier, origin=vector["origin"])
    return open_note(signed, verifiers=verifiers)


@pytest.mark.parametrize("vector", VECTORS)
def test_vector(vector: dict[str, Any]) -> None:
    assert vector["description"] and vector["open"] in ("note", "checkpoint")
    if vector["expected_error"] is not None:
        error = getattr(core, vector["expected_error"])
        with pytest.raises(error) as info:
            _open(vector)
        assert type(info.value) is error  # the leaf, not a subclass or a sibling
        return
    result = _open(vector)
    expected = vector["expected"]
    if vector["open"] == "checkpoint":
        assert result.origin == expected["origin"]
        assert result.size == expected["size"]
        assert result.root_hash == base64.b64decode(expected["root_hash"])
        assert list(result.extensions) == expected["extensions"]
    else:
        assert result.text == expected["text"]
        assert [s.name for s in result.verified] == expected["verified"]
        assert [s.name for s in result.unverified] == expected["unverified"]


@pytest.mark.parametrize("vector", [v for v in VECTORS if "signer_key" in v.values[0]])
def test_vector_signature_is_reproducible(vector: dict[str, Any]) -> None:
    """Ed25519 is deterministic: re-signing the vector's text gives its exact bytes."""
    signed = vector["signed"].encode("utf-8")
    text = signed[: signed.rfind(b"\n\n") + 1].decode("utf-8")
    signer = NoteSigner.from_key_text(vector["signer_key"])
    assert sign_note(text, signer) == signed


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v.values[0]["expected_error"] == "CheckpointError"]
)
def test_checkpoint_errors_come_after_a_verified_signature(vector: dict[str, Any]) -> None:
    """Each checkpoint-body vector carries a genuine signature: the body is what fails."""
    signed = vector["signed"].encode("utf-8")
    verifiers = [NoteVerifier.from_key_text(k) for k in vector["verifier_keys"]]
    assert open_note(signed, verifiers=verifiers).verified


# -- interop with golang.org/x/mod/sumdb/note ---------------------------------


def test_go_key_texts_round_trip() -> None:
    signer = NoteSigner.from_key_text(PETER_SK)
    verifier = NoteVerifier.from_key_text(PETER_VK)
    assert (signer.name, signer.key_hash) == ("PeterNeumann", 0xC74F20A3)
    assert signer.key_text() == PETER_SK
    assert verifier.key_text() == PETER_VK
    assert signer.verifier() == verifier


@pytest.mark.parametrize("key", [PETER_VK, PETER_SK], ids=["verifier", "signer"])
def test_go_key_text_manglings_are_rejected(key: str) -> None:
    """x/mod TestNewVerifier/TestNewSigner: every substring and every +1 byte fails."""
    parse = NoteSigner.from_key_text if key.startswith("PRIVATE") else NoteVerifier.from_key_text
    manglings = {key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)}
    manglings |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    manglings.discard(key)
    for bad in manglings:
        with pytest.raises(KeyMaterialError):
            parse(bad)


@pytest.mark.parametrize(
    "bad",
    [
        # x/mod TestNewVerifier: wrong key length and unknown algorithm, hashes adjusted.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_go_bad_verifier_keys(bad: str) -> None:
    with pytest.raises(KeyMaterialError):
        NoteVerifier.from_key_text(bad)


# -- signing ------------------------------------------------------------------


def test_signer_repr_hides_the_seed() -> None:
    signer = NoteSigner.from_key_text(PETER_SK)
    seed_b64 = PETER_SK.rsplit("+", 1)[1]
    assert seed_b64 not in repr(signer) and "PRIVATE" not in repr(signer)
    assert "PeterNeumann" in repr(signer)


def test_generated_key_signs_and_verifies() -> None:
    signer = NoteSigner.generate("example.com/node")
    verifier = NoteVerifier.from_key_text(signer.verifier().key_text())
    assert NoteSigner.from_key_text(signer.key_text()).key_text() == signer.key_text()
    note = open_note(sign_note("hello\n", signer), verifiers=[verifier])
    assert note.text == "hello\n" and note.verified[0].key_hash == signer.key_hash
    assert verifier.verify(b"hi", signer.sign(b"hi"))
    assert not verifier.verify(b"hj", signer.sign(b"hi"))


@pytest.mark.parametrize("text", ["abc", "", "a\rb\n", "tab\there\n", "\ud800\n"], ids=repr)
def test_sign_rejects_malformed_text(text: str) -> None:
    with pytest.raises(MalformedNoteError):
        sign_note(text, NoteSigner.from_key_text(PETER_SK))


def test_sign_needs_one_to_a_hundred_signers() -> None:
    signer = NoteSigner.from_key_text(PETER_SK)
    with pytest.raises(MalformedNoteError):
        sign_note("x\n")
    with pytest.raises(MalformedNoteError):
        sign_note("x\n", *[signer] * 101)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u3000b", "a\nb", "\ud800"])
def test_invalid_key_names(name: str) -> None:
    assert not is_valid_key_name(name)
    with pytest.raises(KeyMaterialError):
        NoteSigner.generate(name)


def test_two_signers_each_verify() -> None:
    a, b = NoteSigner.generate("a.example"), NoteSigner.generate("b.example")
    signed = sign_note("two\n", a, b)
    note = open_note(signed, verifiers=[b.verifier()])
    assert [s.name for s in note.verified] == ["b.example"]
    assert [s.name for s in note.unverified] == ["a.example"]


def test_same_name_other_key_is_unknown() -> None:
    """Signatures from a key sharing only the name with a known key are ignored."""
    known, impostor = NoteSigner.generate("log.example"), NoteSigner.generate("log.example")
    with pytest.raises(NoVerifiedSignatureError):
        open_note(sign_note("x\n", impostor), verifiers=[known.verifier()])
    note = open_note(sign_note("x\n", impostor, known), verifiers=[known.verifier()])
    assert note.verified[0].key_hash == known.key_hash


def test_bad_signature_from_known_key_rejects_even_with_a_good_one() -> None:
    good, other = NoteSigner.generate("good.example"), NoteSigner.generate("other.example")
    text, other_line, good_line = sign_note("x\n", other, good).decode().rsplit("\n", 3)[:3]
    prefix, b64 = other_line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 0x01
    forged = f"{prefix} {base64.b64encode(bytes(raw)).decode()}"
    signed = f"{text}\n{forged}\n{good_line}\n".encode()
    with pytest.raises(BadSignatureError):
        open_note(signed, verifiers=[good.verifier(), other.verifier()])


def test_invalid_utf8_is_malformed() -> None:
    signed = sign_note("x\n", NoteSigner.from_key_text(PETER_SK))
    with pytest.raises(MalformedNoteError):
        open_note(b"\xff" + signed, verifiers=[NoteVerifier.from_key_text(PETER_VK)])


def test_oversized_note_is_malformed() -> None:
    with pytest.raises(MalformedNoteError):
        open_note(b"x" * (1 << 20) + b"\n\n", verifiers=[])
    with pytest.raises(MalformedNoteError):
        sign_note("x" * (1 << 20) + "\n", NoteSigner.from_key_text(PETER_SK))


def test_errors_share_one_family() -> None:
    for name in ("MalformedNoteError", "BadSignatureError", "NoVerifiedSignatureError"):
        assert issubclass(getattr(core, name), NoteError)


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=0x20) | st.just("\n"),
    max_size=200,
).map(lambda s: s + "\n")


@given(text=_TEXT)
def test_sign_open_round_trip(text: str) -> None:
    signer = NoteSigner.from_key_text(PETER_SK)
    note = open_note(sign_note(text, signer), verifiers=[signer.verifier()])
    assert note.text == text
    assert [s.name for s in note.verified] == ["PeterNeumann"] and note.unverified == ()


@given(text=_TEXT, position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_flipped_bit_is_caught(text: str, position: int, bit: int) -> None:
    signer = NoteSigner.from_key_text(PETER_SK)
    signed = bytearray(sign_note(text, signer))
    signed[position % len(signed)] ^= 1 << bit
    try:
        note = open_note(bytes(signed), verifiers=[signer.verifier()])
    except NoteError:
        return
    # A flip may only survive where it changes nothing the signature covers:
    assert note.text == text
