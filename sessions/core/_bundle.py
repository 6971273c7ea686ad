"""The index of an evidence bundle: what a bundle holds and where (docs/evidence-bundle.md).

A bundle is a POSIX tar archive of exactly these members:

    index.json                  this index (`BundleIndex.to_json`)
    manifest.json               the session's canonical manifest, as the node serves it
    checkpoint.note             the signed checkpoint (may carry extra cosignature lines)
    chunks/<index:010d>.lcs     every sealed chunk, as stored (never plaintext)

Parsing the index is pure; reading the tar is the caller's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sessions.core._errors import BundleError, KeyMaterialError
from sessions.core._keyhistory import KeyPeriod, key_history_from_json

__all__ = ["BUNDLE_FORMAT", "BUNDLE_MEMBERS", "BundleIndex", "bundle_chunk_name"]

BUNDLE_FORMAT = "lucid-evidence-bundle/1"
BUNDLE_MEMBERS = ("index.json", "manifest.json", "checkpoint.note")
_MAX_CHUNKS = 10_000_000_000


def bundle_chunk_name(index: int) -> str:
    """Return the tar member name of sealed chunk `index` (0 ≤ index < 10**10)."""
    if not 0 <= index < _MAX_CHUNKS:
        raise BundleError("chunk index out of range")
    return f"chunks/{index:010d}.lcs"


@dataclass(frozen=True)
class BundleIndex:
    """What a bundle claims: session, chunk count, export time and the node's key history.

    The claims are checked, not trusted: the chunk count against the signed
    manifest, the keys against a key the auditor pinned (if any).
    """

    session_id: str
    chunk_count: int
    exported_at: str
    key_name: str
    key_history: tuple[KeyPeriod, ...]

    def to_json(self) -> bytes:
        """Return the index as UTF-8 JSON (sorted keys, two-space indent)."""
        return json.dumps({
            "format": BUNDLE_FORMAT, "session_id": self.session_id,
            "chunk_count": self.chunk_count, "exported_at": self.exported_at,
            "node": {"key_name": self.key_name,
                     "key_history": [p.to_json() for p in self.key_history]},
        }, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> BundleIndex:
        """Return the index in `raw` (BundleError if it is not a version-1 bundle index)."""
        try:
            d: Any = json.loads(raw)
            if d["format"] != BUNDLE_FORMAT:
                raise BundleError("not a lucid-evidence-bundle/1 index")
            node = d["node"]
            index = cls(session_id=str(d["session_id"]), chunk_count=d["chunk_count"],
                        exported_at=str(d["exported_at"]), key_name=str(node["key_name"]),
                        key_history=key_history_from_json(node["key_history"]))
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError, KeyMaterialError) as exc:
            raise BundleError("malformed bundle index") from exc
        if type(index.chunk_count) is not int or not 0 <= index.chunk_count < _MAX_CHUNKS:
            raise BundleError("malformed bundle index")
        return index
