"""Envelope keys: wrap/unwrap, binding, rotation, crypto-erasure and the master key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pathlib
from dataclasses import asdict
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from sessions.core import (
    DATA_KEY_SIZE,
    ChunkSealer,
    KeyMaterialError,
    MasterKey,
    OpenError,
    UnwrapError,
    WrappedKey,
    new_data_key,
    rewrap,
)

SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
OTHER_SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M9"
RAW = bytes(range(0x20, 0x40))


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(RAW)


def test_new_data_key_is_random_32_bytes() -> None:
    a, b = new_data_key(), new_data_key()
    assert len(a) == len(b) == DATA_KEY_SIZE == 32 and a != b


# -- master key object ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", bytes(16), bytes(31), bytes(33), "x" * 32],
                         ids=["empty", "16", "31", "33", "str"])
def test_master_key_rejects_wrong_length(raw: Any) -> None:
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        MasterKey(raw)


def test_key_id_is_short_public_and_deterministic(master: MasterKey) -> None:
    expect = hmac.new(RAW, b"lucid-sessions/key-id/v1", hashlib.sha256).hexdigest()[:16]
    assert master.key_id == expect == MasterKey(RAW).key_id
    assert MasterKey.generate().key_id != master.key_id


def test_repr_and_str_hide_the_key(master: MasterKey) -> None:
    for text in (repr(master), str(master)):
        assert RAW.hex() not in text and master.key_id in text


def test_text_round_trip(master: MasterKey) -> None:
    text = master.to_text()
    assert text == RAW.hex() + "\n"
    for variant in (text, text.rstrip("\n"), text.rstrip("\n") + "\r\n"):
        assert MasterKey.from_text(variant).key_id == master.key_id
    generated = MasterKey.generate()
    assert MasterKey.from_text(generated.to_text()).key_id == generated.key_id


# -- wrap and unwrap -------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(master: MasterKey) -> None:
    dk = new_data_key()
    wrapped = master.wrap(dk, session_id=SID)
    assert wrapped.key_id == master.key_id and len(wrapped.blob) == 61 and wrapped.blob[0] == 1
    assert dk not in wrapped.blob
    assert master.unwrap(wrapped, session_id=SID) == dk
    assert master.wrap(dk, session_id=SID).blob != wrapped.blob  # fresh nonce every time


def test_json_round_trip(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), session_id=SID)
    doc = json.loads(json.dumps(wrapped.to_json()))
    assert set(doc) == {"key_id", "blob"} and base64.b64decode(doc["blob"]) == wrapped.blob
    assert WrappedKey.from_json(doc) == wrapped


@pytest.mark.parametrize("doc", [
    None, [], "x", {}, {"key_id": "0" * 16}, {"blob": "AA=="},
    {"key_id": "0" * 16, "blob": base64.b64encode(bytes(61)).decode(), "extra": 1},
    {"key_id": "0" * 15, "blob": base64.b64encode(bytes(61)).decode()},
    {"key_id": "G" * 16, "blob": base64.b64encode(bytes(61)).decode()},
    {"key_id": 7, "blob": base64.b64encode(bytes(61)).decode()},
    {"key_id": "0" * 16, "blob": 61},
    {"key_id": "0" * 16, "blob": "not base64!"},
    {"key_id": "0" * 16, "blob": "é"},
    {"key_id": "0" * 16, "blob": base64.b64encode(bytes(60)).decode()},
    {"key_id": "0" * 16, "blob": base64.b64encode(bytes(62)).decode()},
], ids=["none", "list", "str", "empty", "no-blob", "no-key-id", "extra-field", "short-key-id",
        "non-hex-key-id", "int-key-id", "int-blob", "bad-base64", "non-ascii-blob",
        "blob-60", "blob-62"])
def test_from_json_rejects_malformed(doc: Any) -> None:
    with pytest.raises(UnwrapError):
        WrappedKey.from_json(doc)


def test_wrong_session_fails(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), session_id=SID)
    with pytest.raises(UnwrapError):
        master.unwrap(wrapped, session_id=OTHER_SID)


def test_wrong_master_fails(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), session_id=SID)
    other = MasterKey.generate()
    with pytest.raises(UnwrapError, match="different|not"):
        other.unwrap(wrapped, session_id=SID)
    # Even with the key id relabelled to the other master, the tag does not verify.
    relabelled = WrappedKey(key_id=other.key_id, blob=wrapped.blob)
    with pytest.raises(UnwrapError) as info:
        other.unwrap(relabelled, session_id=SID)
    assert not isinstance(info.value.__cause__, InvalidTag)


def test_every_tampered_blob_byte_fails(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), session_id=SID)
    for i in range(len(wrapped.blob)):
        blob = bytearray(wrapped.blob)
        blob[i] ^= 0x01
        with pytest.raises(UnwrapError):
            master.unwrap(WrappedKey(wrapped.key_id, bytes(blob)), session_id=SID)
    for blob in (wrapped.blob[:-1], wrapped.blob + b"\x00", b""):
        with pytest.raises(UnwrapError):
            master.unwrap(WrappedKey(wrapped.key_id, blob), session_id=SID)


def test_tampered_key_id_fails(master: MasterKey) -> None:
    wrapped = master.wrap(new_data_key(), session_id=SID)
    with pytest.raises(UnwrapError):
        master.unwrap(WrappedKey("0" * 16, wrapped.blob), session_id=SID)


@pytest.mark.parametrize("dk", [bytes(31), bytes(33), b""])
def test_wrap_rejects_wrong_data_key_length(master: MasterKey, dk: bytes) -> None:
    with pytest.raises(ValueError):
        master.wrap(dk, session_id=SID)


# -- rotation and crypto-erasure -------------------------------------------------------------


def test_rotation_keeps_chunks_openable(master: MasterKey) -> None:
    dk = new_data_key()
    chunks = [ChunkSealer(dk, session_id=SID).seal(f"frame {i}".encode() * 50, index=i)
              for i in range(4)]
    old_wrapped = master.wrap(dk, session_id=SID)
    new_master = MasterKey.generate()
    new_wrapped = rewrap(old_wrapped, session_id=SID, old=master, new=new_master)

    assert new_wrapped.key_id == new_master.key_id != old_wrapped.key_id
    sealer = ChunkSealer(new_master.unwrap(new_wrapped, session_id=SID), session_id=SID)
    for i, chunk in enumerate(chunks):
        assert sealer.open(chunk.data, index=i) == f"frame {i}".encode() * 50
    with pytest.raises(UnwrapError):
        master.unwrap(new_wrapped, session_id=SID)
    with pytest.raises(UnwrapError):
        rewrap(old_wrapped, session_id=OTHER_SID, old=master, new=new_master)
    with pytest.raises(UnwrapError):
        rewrap(new_wrapped, session_id=SID, old=master, new=new_master)


def test_crypto_erasure(master: MasterKey) -> None:
    dk = new_data_key()
    sealer = ChunkSealer(dk, session_id=SID)
    chunks = [sealer.seal(os.urandom(100) + b"screen" * 100, index=i) for i in range(3)]
    record: dict[str, Any] = {
        "id": SID, "wrapped_key": master.wrap(dk, session_id=SID).to_json(),
        "chunks": [{k: v.hex() if isinstance(v, bytes) else v
                    for k, v in asdict(c).items() if k != "data"} for c in chunks],
    }
    assert sealer.open(chunks[0].data, index=0)  # openable while the wrapped key exists
    record["wrapped_key"] = None  # the erase step: drop the only copy of the wrapped key
    del sealer

    # What remains (metadata and sealed bytes) holds neither the data key nor the master key,
    # and nothing else opens the chunks: the master key has no blob left to unwrap.
    remaining = json.dumps(record).encode() + b"".join(c.data for c in chunks)
    for secret in (dk, RAW):
        assert secret not in remaining and secret.hex().encode() not in remaining
    for c in chunks:
        for guess in (new_data_key(), RAW, bytes(32)):
            with pytest.raises(OpenError):
                ChunkSealer(guess, session_id=SID).open(c.data, index=c.index)


def test_erased_key_is_not_recoverable_from_the_sealed_bytes() -> None:
    dk = new_data_key()
    chunks = [ChunkSealer(dk, session_id=SID).seal(bytes(1000), index=i) for i in range(3)]
    for c in chunks:
        assert dk not in c.data and dk.hex().encode() not in c.data


# -- master key file ---------------------------------------------------------------------------


def test_from_file_round_trip(tmp_path: pathlib.Path, master: MasterKey) -> None:
    for content in (master.to_text(), master.to_text().strip(), RAW.hex() + "\r\n"):
        path = tmp_path / "master.key"
        path.write_bytes(content.encode())
        assert MasterKey.from_file(path).key_id == master.key_id
        assert MasterKey.from_file(str(path)).key_id == master.key_id


SECRETISH = "0123456789abcdef" * 4  # 64 valid hex characters used to build bad files

BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "only-newline": (b"\n", "empty"),
    "too-short": (SECRETISH[:63].encode() + b"\n", "64 hex"),
    "too-long": (SECRETISH.encode() + b"ab\n", "64 hex"),
    "two-trailing-newlines": (SECRETISH.encode() + b"\n\n", "64 hex"),
    "leading-space": (b" " + SECRETISH[1:].encode(), "hex"),
    "uppercase": (SECRETISH.upper().encode(), "lowercase hex"),
    "non-hex": (SECRETISH[:-1].encode() + b"g", "lowercase hex"),
    "non-ascii": (SECRETISH[:-2].encode() + "é".encode(), "hex"),
    "binary-key": (bytes(range(32)), "64 hex"),
    "huge": (SECRETISH.encode() * 1000, "64 hex"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_from_file_errors_are_clear_and_never_echo_content(tmp_path: pathlib.Path,
                                                           case: str) -> None:
    content, expect = BAD_FILES[case]
    path = tmp_path / "master.key"
    path.write_bytes(content)
    with pytest.raises(KeyMaterialError, match=expect) as info:
        MasterKey.from_file(path)
    message = str(info.value)
    assert str(path) in message
    for i in range(0, max(0, len(content) - 8)):
        assert content[i:i + 8].decode("latin-1") not in message, "message echoes the file"
    assert info.value.__cause__ is None


def test_from_file_missing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyMaterialError, match="does not exist") as info:
        MasterKey.from_file(path)
    assert str(path) in str(info.value)


def test_from_file_unreadable(tmp_path: pathlib.Path) -> None:
    with pytest.raises(KeyMaterialError, match="cannot be read"):
        MasterKey.from_file(tmp_path)  # a directory


@pytest.mark.parametrize("text", ["", "abc", SECRETISH.upper(), SECRETISH + " "])
def test_from_text_errors_never_echo_the_text(text: str) -> None:
    with pytest.raises(KeyMaterialError) as info:
        MasterKey.from_text(text)
    assert not text or text.strip() not in str(info.value)
