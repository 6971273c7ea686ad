"""`Upload-Checksum` (sessions/common/checksums.py): the header's grammar, its OpenAPI pattern,
and CRC-32C held to RFC 3720's vectors and to a naive bitwise reference written here."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.common.checksums import ALGORITHMS, DIGEST_SIZES, PATTERN, Checksum, hasher
from sessions.common.errors import BadRequest

ZERO_HASH = b"\x00" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def naive_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (the reflected Castagnoli polynomial 0x82F63B78, RFC 3720 B.4)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------- crc32c

# RFC 3720 (iSCSI) B.4's test vectors, and the catalogue's check value of "123456789"
RFC3720 = [
    (b"\x00" * 32, 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


@pytest.mark.parametrize(("data", "crc"), RFC3720,
                         ids=["zeros", "ones", "up", "down", "check", "empty"])
def test_crc32c_gives_rfc_3720s_values_big_endian(data: bytes, crc: int) -> None:
    h = hasher("crc32c")
    h.update(data)
    assert h.digest() == crc.to_bytes(4, "big")
    assert naive_crc32c(data) == crc  # the reference itself is right
    assert Checksum.of("crc32c", data) == Checksum("crc32c", crc.to_bytes(4, "big"))


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_crc32c_in_pieces_is_the_naive_crc_of_the_whole(pieces: list[bytes]) -> None:
    h = hasher("crc32c")
    for piece in pieces:
        h.update(memoryview(piece))
    assert h.digest() == naive_crc32c(b"".join(pieces)).to_bytes(4, "big")


def test_a_large_buffer_is_hashed_as_in_pieces() -> None:
    """Past the size where the extension lets go of the GIL (and takes its wide path)."""
    data = bytes(range(251)) * 1200 + b"tail"
    whole, parts = hasher("crc32c"), hasher("crc32c")
    whole.update(data)
    for at in range(0, len(data), 4099):
        parts.update(data[at:at + 4099])
    assert whole.digest() == parts.digest() == naive_crc32c(data).to_bytes(4, "big")


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_the_other_algorithms_are_hashlibs(algorithm: str) -> None:
    h = hasher(algorithm)
    h.update(b"hello")
    assert h.digest() == hashlib.new(algorithm, b"hello").digest()
    assert len(h.digest()) == DIGEST_SIZES[algorithm]


def test_an_unknown_algorithm_has_no_hasher() -> None:
    with pytest.raises(KeyError):
        hasher("sha512")


def test_the_algorithms_are_lowercase_ascii_tus_names() -> None:
    assert ALGORITHMS[0] == "crc32c"
    assert all(name == name.lower() and name.isascii() for name in ALGORITHMS)


# ------------------------------------------------------------------------ Checksum.parse

DIGEST = hashlib.sha256(b"hello").digest()
SLASHY = b"\xfb\xff\xbf" * 10 + b"\xfb\xff"  # standard base64 of this is full of '+' and '/'


@pytest.mark.parametrize(("header", "digest"), [
    ("sha256 " + b64(DIGEST), DIGEST),
    ("SHA256 " + b64(DIGEST), DIGEST),
    ("Sha256 " + b64(DIGEST), DIGEST),
    ("  sha256   " + b64(DIGEST) + "  ", DIGEST),
    ("sha256 " + b64(SLASHY), SLASHY),
    ("sha256 " + b64(ZERO_HASH), ZERO_HASH),
], ids=["lower", "upper", "mixed-case", "extra-spaces", "plus-and-slash", "zero"])
def test_a_valid_checksum_gives_its_32_bytes(header: str, digest: bytes) -> None:
    assert Checksum.parse(header) == Checksum("sha256", digest)


SHA1 = hashlib.sha1(b"hello").digest()  # noqa: S324 - the tus checksum extension's MUST
MD5 = hashlib.md5(b"hello").digest()  # noqa: S324 - test input


@pytest.mark.parametrize(("header", "expected"), [
    ("sha1 " + b64(SHA1), Checksum("sha1", SHA1)),
    ("md5 " + b64(MD5), Checksum("md5", MD5)),
], ids=["sha1", "md5"])
def test_the_tus_algorithms_sha1_and_md5_are_accepted(header: str, expected: Checksum) -> None:
    assert Checksum.parse(header) == expected


BAD_CHECKSUMS = {
    "md5-32-bytes": "md5 " + b64(DIGEST),
    "sha1-16-bytes": "sha1 " + b64(MD5),
    "sha-256": "sha-256 " + b64(DIGEST),
    "sha512": "sha512 " + b64(hashlib.sha512(b"hello").digest()),
    "colon-form": "sha256:" + b64(DIGEST),
    "tab-separator": "sha256\t" + b64(DIGEST),
    "no-algo": b64(DIGEST),
    "empty": "",
    "algo-only": "sha256",
    "not-base64": "sha256 !!!!not-base64!!!!",
    "hex-digest": "sha256 " + DIGEST.hex(),
    "urlsafe-base64": "sha256 " + base64.urlsafe_b64encode(SLASHY).decode(),
    "missing-padding": "sha256 " + b64(DIGEST).rstrip("="),
    "inner-space": "sha256 " + b64(DIGEST)[:20] + " " + b64(DIGEST)[20:],
    "non-ascii": "sha256 " + b64(DIGEST)[:-2] + "é=",
    "31-bytes": "sha256 " + b64(DIGEST[:31]),
    "33-bytes": "sha256 " + b64(DIGEST + b"\x00"),
    "64-bytes": "sha256 " + b64(DIGEST * 2),
    "empty-digest": "sha256 ",
}


@pytest.mark.parametrize("header", list(BAD_CHECKSUMS.values()), ids=list(BAD_CHECKSUMS))
def test_a_bad_checksum_is_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        Checksum.parse(header)
    assert type(info.value) is BadRequest
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert info.value.detail.startswith("Upload-Checksum ")


@given(st.text(max_size=80))
def test_any_header_gives_a_digest_of_its_size_or_a_bad_request(header: str) -> None:
    try:
        checksum = Checksum.parse(header)
    except BadRequest:
        return
    assert len(checksum.digest) == DIGEST_SIZES[checksum.algorithm]
    assert Checksum.parse(f"{checksum.algorithm} {b64(checksum.digest)}") == checksum


@given(st.binary(min_size=32, max_size=32))
def test_every_digest_round_trips(digest: bytes) -> None:
    assert Checksum.parse(f"sha256 {b64(digest)}") == Checksum("sha256", digest)


# ------------------------------------------------------------------------------- crc32c header

def test_a_crc32c_header_carries_four_bytes() -> None:
    crc = (0xE3069283).to_bytes(4, "big")
    assert Checksum.parse("crc32c 4waSgw==") == Checksum("crc32c", crc)
    assert Checksum("crc32c", crc).header == "crc32c 4waSgw=="
    for bad in ("crc32c 4waSgw", "crc32c 4waSgwA=", "crc32 4waSgw==", "crc32c " + b64(ZERO_HASH)):
        with pytest.raises(BadRequest):
            Checksum.parse(bad)


# -------------------------------------------------------------------------- the OpenAPI pattern

@given(st.sampled_from(ALGORITHMS).flatmap(
    lambda name: st.binary(min_size=DIGEST_SIZES[name], max_size=DIGEST_SIZES[name])
    .map(lambda digest: Checksum(name, digest))))
def test_every_header_the_client_sends_matches_the_pattern(checksum: Checksum) -> None:
    assert re.match(PATTERN, checksum.header)
    assert Checksum.parse(checksum.header) == checksum


@given(st.from_regex(PATTERN, fullmatch=True))
def test_every_header_the_pattern_admits_parses(header: str) -> None:
    """What the OpenAPI documents admit, the services accept (schemathesis sends such)."""
    checksum = Checksum.parse(header)
    assert len(checksum.digest) == DIGEST_SIZES[checksum.algorithm]


@pytest.mark.parametrize("header", list(BAD_CHECKSUMS.values()), ids=list(BAD_CHECKSUMS))
def test_the_pattern_refuses_what_the_parser_refuses(header: str) -> None:
    assert not re.match(PATTERN, header)
