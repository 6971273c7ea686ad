"""docs/format.md's worked example is recomputed here, so the document can never rot.

The numbers are read from fenced blocks whose info string is `text example:<name>`
(hex may be split by spaces or lines); the Python snippet (`python example:snippet`)
is executed and must agree with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib
import re
import struct
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sessions.core import (
    HEADER_SIZE,
    TAG_SIZE,
    ChunkFlags,
    ChunkSealer,
    MasterKey,
    SealedChunk,
    parse_header,
)
from sessions.core._sealing import _seal_with_nonce, chunk_aad

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "format.md"
BLOCK_RE = re.compile(r"^```(\w+) example:([a-z_]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for _lang, name, body in BLOCK_RE.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"example:{name} appears twice"
        found[name] = body
    return found


BLOCKS = _blocks()


def text(name: str) -> str:
    return BLOCKS[name].strip()


def hexblock(name: str) -> bytes:
    return bytes.fromhex("".join(BLOCKS[name].split()))


def test_all_example_blocks_are_present() -> None:
    assert set(BLOCKS) == {"master_key_text", "master_key_id", "data_key", "session_id", "index",
                           "plaintext", "nonce", "header", "aad", "sealed", "leaf_hash",
                           "snippet"}


@dataclass(frozen=True)
class Example:
    key: bytes
    sid: str
    index: int
    plaintext: bytes
    nonce: bytes
    chunk: SealedChunk


@pytest.fixture(scope="module")
def example() -> Example:
    key, sid, index = hexblock("data_key"), text("session_id"), int(text("index"))
    plaintext, nonce = hexblock("plaintext"), hexblock("nonce")
    chunk = _seal_with_nonce(AESGCM(key), session_id=sid, index=index, plaintext=plaintext,
                             nonce=nonce, zstd_level=3)
    return Example(key, sid, index, plaintext, nonce, chunk)


def test_inputs_are_the_ones_the_prose_describes(example: Example) -> None:
    assert example.key == bytes(range(32))
    assert example.plaintext == b"hello lucid"
    assert len(example.nonce) == 12 and len(example.sid) == 26


def test_header_aad_sealed_and_leaf_hash_match_the_code(example: Example) -> None:
    data = example.chunk.data
    assert data[:HEADER_SIZE] == hexblock("header")
    assert chunk_aad(example.sid, hexblock("header")) == hexblock("aad")
    assert data == hexblock("sealed")
    assert example.chunk.leaf_hash == hexblock("leaf_hash")
    assert not example.chunk.compressed
    assert len(data) == HEADER_SIZE + len(example.plaintext) + TAG_SIZE


def test_header_fields_are_laid_out_as_the_table_says(example: Example) -> None:
    header = hexblock("header")
    assert struct.unpack(">4sBBHQI12s", header) == (
        b"LUCS", 1, 0, 0, example.index, len(example.plaintext), example.nonce)
    parsed = parse_header(hexblock("sealed"))
    assert (parsed.index, parsed.flags, parsed.nonce) == (
        example.index, ChunkFlags.NONE, example.nonce)


def test_plain_cryptography_reproduces_and_opens_the_example(example: Example) -> None:
    header, sealed = hexblock("header"), hexblock("sealed")
    prefix = b"lucid-sessions/chunk/v1\x00" + bytes([len(example.sid)]) + example.sid.encode()
    aad = prefix + header
    assert aad == hexblock("aad")
    aead = AESGCM(example.key)
    assert aead.decrypt(sealed[20:32], sealed[32:], aad) == example.plaintext
    assert header + aead.encrypt(example.nonce, example.plaintext, aad) == sealed
    assert hashlib.sha256(b"\x00" + sealed).digest() == hexblock("leaf_hash")


def test_the_sealer_opens_the_example(example: Example) -> None:
    sealer = ChunkSealer(example.key, session_id=example.sid)
    assert sealer.open(hexblock("sealed"), index=example.index) == example.plaintext


def test_the_python_snippet_runs_and_agrees() -> None:
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS["snippet"], "docs/format.md:snippet", "exec"), namespace)  # noqa: S102
    assert namespace["header"] == hexblock("header")
    assert namespace["aad"] == hexblock("aad")
    assert namespace["sealed"] == hexblock("sealed")
    assert namespace["leaf"] == hexblock("leaf_hash")
    assert out.getvalue().split() == [hexblock(n).hex() for n in
                                      ("header", "aad", "sealed", "leaf_hash")]


def test_master_key_file_example() -> None:
    key = MasterKey.from_text(BLOCKS["master_key_text"])
    assert key.key_id == text("master_key_id")
    assert key.to_text() == BLOCKS["master_key_text"]
