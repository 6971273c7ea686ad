"""`Upload-Checksum`: the digest a request's body must have (tus checksum extension).

One table for every hop: the gateway checks a header's shape before forwarding it, the
processor hashes the body and compares, the CLI computes the header it sends.

`crc32c` (CRC-32C, Castagnoli: iSCSI's, ext4's and S3's checksum) is what the CLI sends:
it catches bytes damaged on the way at a fraction of SHA-256's CPU (hardware
instructions on x86-64 and on the Pi 5's Cortex-A76).  It is not a defence against an
attacker and does not need to be: TLS protects the bytes in transit, and the sealed
chunks' Merkle tree is what proves a recording afterwards.  `sha256`, `sha1` and `md5`
stay for the clients that send them (tus clients offer sha1 first).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from sessions.common.errors import BadRequest

if TYPE_CHECKING:
    from typing_extensions import Buffer

DIGEST_SIZES: Final = {"crc32c": 4, "sha256": 32, "sha1": 20, "md5": 16}
"""The algorithms accepted, by tus name (lowercase ASCII), with their digest sizes."""

ALGORITHMS: Final = tuple(DIGEST_SIZES)
"""As the gateway offers them in `Tus-Checksum-Algorithm`."""


class Hasher(Protocol):
    """What hashes a body: hashlib's objects and crc32c's `CRC32CHash` alike."""

    def update(self, data: Buffer, /) -> None: ...

    def digest(self) -> bytes: ...


def hasher(algorithm: str) -> Hasher:
    """Return a fresh hasher for one of ALGORITHMS (KeyError otherwise).

    Both kinds let go of the GIL while they hash a large buffer, so a hashing thread
    runs beside the event loop."""
    if algorithm not in DIGEST_SIZES:
        raise KeyError(algorithm)
    if algorithm == "crc32c":
        import crc32c  # here, not above: its import reads package metadata (~8 ms a CLI start)

        return crc32c.CRC32CHash()
    return hashlib.new(algorithm, usedforsecurity=False)


def _base64_of(size: int) -> str:
    """A regular expression of the padded base64 of exactly `size` bytes."""
    chars, pad = -(-size * 4 // 3), (3 - size % 3) % 3
    return "[A-Za-z0-9+/]{" + str(chars) + "}" + "=" * pad


def _any_case(name: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in name)


PATTERN: Final = ("^(" + "|".join(f"{_any_case(name)} [ \\t]*{_base64_of(size)}"
                                  for name, size in DIGEST_SIZES.items()) + ")[ \\t]*$")
"""The header's shape as a JSON-schema pattern (the OpenAPI documents use it)."""


@dataclass(frozen=True, slots=True)
class Checksum:
    """An algorithm of ALGORITHMS and the digest a body must have."""

    algorithm: str
    digest: bytes

    @classmethod
    def of(cls, algorithm: str, data: Buffer) -> Checksum:
        """Return the checksum of `data` by one of ALGORITHMS (KeyError otherwise)."""
        digest = hasher(algorithm)
        digest.update(data)
        return cls(algorithm, digest.digest())

    @classmethod
    def parse(cls, header: str) -> Checksum:
        """Return the checksum of `<algorithm> <base64 digest>`.

        The algorithm is one of ALGORITHMS (any case), the digest exactly its size;
        BadRequest otherwise."""
        name, _, value = header.strip().partition(" ")
        algorithm = name.lower()
        size = DIGEST_SIZES.get(algorithm)
        try:
            digest = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if size is None or len(digest) != size:
            raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>' with an "
                             "algorithm of " + ", ".join(ALGORITHMS) + " and a digest of its size")
        return cls(algorithm, digest)

    @property
    def header(self) -> str:
        """The `Upload-Checksum` value: `<algorithm> <base64 digest>`."""
        return f"{self.algorithm} {base64.b64encode(self.digest).decode('ascii')}"
