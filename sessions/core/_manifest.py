"""The manifest of a finalized session, and its one canonical JSON serialisation.

Canonical form: UTF-8 JSON, object keys sorted by code point, no insignificant
whitespace (`separators=(",", ":")`), non-ASCII characters written as
themselves (`ensure_ascii=False`), integers and booleans only (no floats),
hashes as lowercase hex, chunks as a list in index order.

`Manifest.from_json` accepts *only* that form: it rebuilds the manifest, writes
it back and requires the very same bytes.  So there is exactly one byte string
per manifest, and a reformatted, reordered, duplicated-key or upper-case-hex
document is rejected (ManifestError) rather than silently normalised.
`from_json` checks structure and types; `check()` checks the manifest's internal
consistency, including the RFC 9162 root over the leaf hashes.

Spec: docs/architecture.md ("GET /sessions/{id}/manifest"); RFC 9162 §2.1.1
for the root; RFC 3339 §5.6 for `created_at`.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import hashlib
import json
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sessions.core._checkpoint import open_checkpoint
from sessions.core._errors import ManifestError
from sessions.core._merkle_hash import HASH_SIZE
from sessions.core._merkle_tree import root_hash as _tree_root_hash
from sessions.core._note import NoteVerifier
from sessions.core._sealing import CIPHER_NAME

__all__ = ["CIPHER", "MANIFEST_VERSION", "ChunkEntry", "Manifest"]

CIPHER = CIPHER_NAME  # the one cipher a manifest may name (format v1)
MANIFEST_VERSION = 1
MANIFEST_EXTENSION = "lucid-manifest-sha256"
"""Names the final checkpoint's extension line that commits to the manifest's contents."""

_CHUNK_FIELDS = {
    "index": int, "offset": int, "length": int, "sealed_length": int,
    "leaf_hash": bytes, "compressed": bool,
}  # fmt: skip
_FIELDS = {
    "session_id": str, "labels": dict, "created_at": str, "plaintext_size": int,
    "sealed_size": int, "chunk_count": int, "chunk_size": int, "zstd_level": int,
    "cipher": str, "format_version": int, "chunks": list, "root_hash": bytes,
    "checkpoint": str, "manifest_version": int,
}  # fmt: skip
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:Z|[+-]([0-9]{2}):([0-9]{2}))"
)


def _is(value: object, kind: type) -> bool:
    """Return whether `value` has exactly the JSON kind `kind` (a bool is not an int)."""
    return type(value) is kind


def _bad(message: str) -> ManifestError:
    return ManifestError(message)


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One sealed chunk: its place in the plaintext, its sealed size and its leaf hash."""

    index: int
    offset: int
    length: int
    sealed_length: int
    leaf_hash: bytes
    compressed: bool

    def __post_init__(self) -> None:
        """Check each field's type (ManifestError); values are checked by Manifest.check."""
        for name, kind in _CHUNK_FIELDS.items():
            if not _is(getattr(self, name), kind):
                raise _bad(f"chunk field {name} has the wrong type")

    def _to_obj(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CHUNK_FIELDS} | {
            "leaf_hash": self.leaf_hash.hex()
        }


@dataclass(frozen=True)
class Manifest:
    """What a finalized session is: its chunks, their Merkle root and the signed checkpoint.

    `labels` may be given as any mapping; it is stored as a read-only mapping
    sorted by key, and `chunks` as a tuple.
    """

    session_id: str
    labels: Mapping[str, str] = field(hash=False)
    created_at: str
    plaintext_size: int
    sealed_size: int
    chunk_count: int
    chunk_size: int
    zstd_level: int
    cipher: str
    format_version: int
    chunks: tuple[ChunkEntry, ...]
    root_hash: bytes
    checkpoint: str
    manifest_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        """Freeze labels and chunks and check each field's type (ManifestError)."""
        if not isinstance(self.labels, Mapping):
            raise _bad("field labels has the wrong type")
        labels = dict(sorted(self.labels.items()))
        if not all(_is(k, str) and _is(v, str) for k, v in labels.items()):
            raise _bad("field labels has the wrong type")
        object.__setattr__(self, "labels", types.MappingProxyType(labels))
        object.__setattr__(self, "chunks", tuple(self.chunks))
        if not all(_is(c, ChunkEntry) for c in self.chunks):
            raise _bad("field chunks has the wrong type")
        for name, kind in _FIELDS.items():
            if kind not in (dict, list) and not _is(getattr(self, name), kind):
                raise _bad(f"field {name} has the wrong type")

    # -- serialisation ---------------------------------------------------

    def to_json(self) -> bytes:
        """Return the canonical JSON bytes of this manifest (see the module docstring)."""
        obj = {name: getattr(self, name) for name in _FIELDS} | {
            "labels": dict(self.labels),
            "chunks": [c._to_obj() for c in self.chunks],
            "root_hash": self.root_hash.hex(),
        }
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate in some string
            raise _bad("manifest text is not valid Unicode") from exc

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Return the manifest whose canonical JSON is exactly `data` (ManifestError otherwise).

        Requires: every field present, no other field, each of its JSON type,
        lowercase hex hashes, and `data` byte-identical to the canonical form.
        Does not check consistency: call `check()` for that.
        """
        try:
            obj = json.loads(data, object_pairs_hook=_no_duplicates, parse_float=_no_float)
        except (ValueError, RecursionError) as exc:
            raise _bad("manifest is not valid JSON") from exc
        fields = _take(obj, _FIELDS, "manifest")
        labels = fields["labels"]
        if not all(_is(v, str) for v in labels.values()):
            raise _bad("manifest field labels has the wrong type")
        chunks = tuple(_chunk_from_obj(c) for c in fields["chunks"])
        manifest = cls(**(fields | {"labels": labels, "chunks": chunks}))
        if manifest.to_json() != data:
            raise _bad("manifest is not in canonical form")
        return manifest

    # -- consistency -----------------------------------------------------

    def check(self, *, verifier: NoteVerifier | None = None, origin: str | None = None) -> None:
        """Check that the manifest is internally consistent (ManifestError otherwise).

        Checks: chunk_count == len(chunks); indexes 0..n-1; offsets contiguous
        from 0; 0 < length ≤ chunk_size and sealed_length > 0 for each chunk;
        Σ length == plaintext_size; Σ sealed_length == sealed_size; 32-byte
        hashes; root_hash == RFC 9162 MTH(leaf hashes) (§2.1.1); known cipher and
        manifest version; created_at in RFC 3339 §5.6 form.
        With `verifier`, the checkpoint is also opened (signature first; NoteError
        family on failure, CheckpointError if `origin` is given and differs), its
        size and root must equal chunk_count and root_hash, and it must carry
        `checkpoint_extension()`, which commits to everything else in the manifest.
        """
        self._check_scalars()
        self._check_chunks()
        if len(self.root_hash) != HASH_SIZE:
            raise _bad("root hash is not 32 bytes")
        if _root([c.leaf_hash for c in self.chunks]) != self.root_hash:
            raise _bad("root hash does not match the leaf hashes")
        if verifier is not None:
            self._check_checkpoint(verifier, origin)
        elif origin is not None:
            raise ValueError("an origin can only be checked together with a verifier")

    def _check_scalars(self) -> None:
        if self.manifest_version != MANIFEST_VERSION or self.cipher != CIPHER:
            raise _bad("unknown manifest version or cipher")
        if not self.session_id or self.format_version < 1 or self.chunk_size < 1:
            raise _bad("session id, format version or chunk size out of range")
        if min(self.plaintext_size, self.sealed_size, self.chunk_count) < 0:
            raise _bad("negative size or count")
        if not _is_rfc3339(self.created_at):
            raise _bad("created_at is not an RFC 3339 date-time")

    def _check_chunks(self) -> None:
        if self.chunk_count != len(self.chunks):
            raise _bad("chunk_count does not match the chunk list")
        offset = sealed = 0
        for i, c in enumerate(self.chunks):
            if c.index != i or c.offset != offset:
                raise _bad("chunk indexes or offsets are not contiguous")
            if not 0 < c.length <= self.chunk_size or c.sealed_length <= 0:
                raise _bad("chunk length out of range")
            if len(c.leaf_hash) != HASH_SIZE:
                raise _bad("leaf hash is not 32 bytes")
            offset += c.length
            sealed += c.sealed_length
        if offset != self.plaintext_size or sealed != self.sealed_size:
            raise _bad("chunk lengths do not add up to the session sizes")

    def _check_checkpoint(self, verifier: NoteVerifier, origin: str | None) -> None:
        signed = self.checkpoint.encode("utf-8")
        cp = open_checkpoint(signed, verifier=verifier, origin=origin)
        if cp.size != self.chunk_count or cp.root_hash != self.root_hash:
            raise _bad("checkpoint does not match the manifest")
        if self.checkpoint_extension() not in cp.extensions:
            raise _bad("checkpoint does not commit to this manifest's labels and chunk list")

    # -- what the final checkpoint signs besides the root -----------------

    def contents_digest(self) -> bytes:
        """Return SHA-256 of this manifest's canonical JSON with its checkpoint left empty.

        The root covers the sealed chunks; this digest covers the rest (labels,
        created_at, parameters, every chunk's offset and length), so the final
        checkpoint can sign both without a circular reference to itself.
        """
        return hashlib.sha256(dataclasses.replace(self, checkpoint="").to_json()).digest()

    def checkpoint_extension(self) -> str:
        """Return the extension line the final checkpoint carries: `lucid-manifest-sha256 <hex>`."""
        return f"{MANIFEST_EXTENSION} {self.contents_digest().hex()}"

    # -- lookup ----------------------------------------------------------

    def chunk_for_offset(self, offset: int) -> int:
        """Return the index of the chunk whose [offset, offset + length) holds `offset`.

        Requires 0 ≤ offset < plaintext_size (ValueError otherwise) and a
        manifest that passed `check()`.  O(log n) binary search.
        """
        if not 0 <= offset < self.plaintext_size:
            raise ValueError("offset outside the session's plaintext")
        return bisect.bisect_right(self.chunks, offset, key=lambda c: c.offset) - 1


def _root(leaves: Sequence[bytes]) -> bytes:
    """Return the RFC 9162 §2.1.1 root over `leaves` (EMPTY_ROOT when there are none)."""
    return _tree_root_hash(leaves)


def _is_rfc3339(text: str) -> bool:
    """Return whether `text` is an RFC 3339 §5.6 date-time with upper-case T and Z."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    off_h, off_m = (int(g) if g else 0 for g in m.groups()[6:])
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    return hour <= 23 and minute <= 59 and second <= 60 and off_h <= 23 and off_m <= 59


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _bad("duplicate key in manifest JSON")
    return result


def _no_float(text: str) -> Any:
    raise _bad("manifest JSON holds a non-integer number")


def _take(obj: object, spec: Mapping[str, type], what: str) -> dict[str, Any]:
    """Return `obj`'s fields, hex decoded, if it has exactly `spec`'s fields and types."""
    if not _is(obj, dict):
        raise _bad(f"{what} is not a JSON object")
    assert isinstance(obj, dict)
    if set(obj) != set(spec):
        raise _bad(f"{what} has missing or unknown fields")
    fields: dict[str, Any] = {}
    for name, kind in spec.items():
        value = obj[name]
        if kind is bytes:
            if not _is(value, str) or not _HEX.fullmatch(value):
                raise _bad(f"{what} field {name} is not lowercase hex")
            value = bytes.fromhex(value)
        elif not _is(value, kind):
            raise _bad(f"{what} field {name} has the wrong type")
        fields[name] = value
    return fields


def _chunk_from_obj(obj: object) -> ChunkEntry:
    return ChunkEntry(**_take(obj, _CHUNK_FIELDS, "chunk"))
