"""Metadata integrity: what storage says about a session, checked against what was signed.

Storage keeps, for every session, the processor's last signed checkpoint of it
(its *anchor*): while recording, one signed after each upload request, carrying
the committed plaintext and sealed sizes in an extension line; once completed,
the final checkpoint inside the signed manifest.  Nothing storage says (a root,
a size, a chunk count, a chunk row, a leaf hash) is used, signed anew or shown
as verified before it has been checked against that anchor: stored leaf hashes
must extend the anchor's tree (RFC 9162 §2.1.4 consistency proof), and a
completed session's records must equal its manifest.

A finding names what is wrong in the metadata (`what`, and the chunk `index`
when a chunk row is wrong); damaged chunk files are reported apart from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.common.errors import MetadataCorrupt
from sessions.core import (
    Checkpoint,
    CoreError,
    LeafHashes,
    Manifest,
    NoteVerifier,
    ProofError,
    consistency_proof,
    open_checkpoint,
    root_hash,
    verify_consistency,
)
from sessions.processor.readback import ChunkFacts
from sessions.processor.storage_client import ChunkRow, SessionRow

SIZES_EXTENSION = "lucid-recorded"
"""Names the anchor's extension line `lucid-recorded <plaintext bytes> <sealed bytes>`."""
LABELS_EXTENSION = "lucid-labels-sha256"
"""Names the anchor's extension line with SHA-256 of the labels' canonical JSON."""
_SIZES = re.compile(SIZES_EXTENSION + r" (0|[1-9][0-9]{0,19}) (0|[1-9][0-9]{0,19})")
_LABELS = re.compile(LABELS_EXTENSION + r" ([0-9a-f]{64})")
_ROW_FIELDS = ("leaf_hash", "offset", "length", "sealed_length", "compressed")
MAX_GUESSES = 64  # assignments tried to tell row damage from chunk damage (see resolve_leaves)


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of metadata that disagrees with what was signed."""

    what: str
    index: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "index": self.index, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Anchor:
    """The last signed checkpoint of a session, opened: tree size, root and recorded sizes."""

    checkpoint: Checkpoint
    plaintext_size: int | None
    sealed_size: int | None
    labels_line: str | None = None

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def final(self) -> bool:
        """Whether this is a final checkpoint (it commits to a manifest)."""
        return any(e.startswith("lucid-manifest-sha256 ") for e in self.checkpoint.extensions)


def sizes_extension(plaintext: int, sealed: int) -> str:
    """Return the anchor's extension line for these committed sizes."""
    return f"{SIZES_EXTENSION} {plaintext} {sealed}"


def labels_extension(labels: Mapping[str, str]) -> str:
    """Return the anchor's extension line for these labels (canonical JSON, as the manifest's)."""
    text = json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{LABELS_EXTENSION} {hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def labels_differ(row: SessionRow, anchor: Anchor | None) -> bool:
    """Return whether the record's labels differ from those the anchor signed."""
    return anchor is not None and anchor.labels_line is not None and (
        labels_extension(row.labels) != anchor.labels_line)


def open_anchor(signed: bytes, *, verifier: NoteVerifier, origin: str) -> Anchor:
    """Return the anchor in `signed` after its signature and origin check (CoreError if not)."""
    cp = open_checkpoint(signed, verifier=verifier, origin=origin)
    sizes = next((m for e in cp.extensions if (m := _SIZES.fullmatch(e))), None)
    labels = next((e for e in cp.extensions if _LABELS.fullmatch(e)), None)
    return Anchor(cp, int(sizes.group(1)) if sizes else None,
                  int(sizes.group(2)) if sizes else None, labels)


def extends(leaves: Sequence[bytes], anchor: Anchor) -> bool:
    """Return whether `leaves` extend the anchor's tree (RFC 9162 §2.1.4.2 consistency)."""
    old, new = anchor.size, len(leaves)
    if old > new:
        return False
    nodes = LeafHashes(leaves)
    proof = consistency_proof(old, new_size=new, nodes=nodes)
    try:
        verify_consistency(anchor.checkpoint.root_hash, root_hash(leaves),
                           old_size=old, new_size=new, proof=proof)
    except ProofError:
        return False
    return True


def require_extends(leaves: Sequence[bytes], anchor: Anchor | None) -> None:
    """Check that stored leaves extend the anchor; raise MetadataCorrupt otherwise.

    No anchor is accepted only for a session without chunks: every session this
    version creates is anchored at size 0 before its id is returned.
    """
    if anchor is None:
        if leaves:
            raise MetadataCorrupt("no signed checkpoint is kept for a session with chunks")
        return
    if not extends(leaves, anchor):
        raise MetadataCorrupt(extra={"chunk_count": len(leaves), "signed_size": anchor.size})


def session_findings(row: SessionRow, rows: Sequence[ChunkRow],
                     anchor: Anchor | None) -> list[Finding]:
    """Return what is wrong with a not yet completed session's record and chunk rows.

    Checks: rows are indexes 0..n-1 with contiguous offsets; the record's offset,
    chunk count and sealed bytes add up to its rows; the anchor's size is at most
    the chunk count and, at equal size, its signed sizes equal the record's.
    """
    found: list[Finding] = []
    offset = sealed = 0
    for i, r in enumerate(rows):
        if r.index != i or r.offset != offset:
            found.append(Finding("offset", i, "chunk rows are not contiguous here"))
        offset += r.length
        sealed += r.sealed_length
    if len(rows) != row.chunk_count:
        found.append(Finding("chunk_count", None, f"{len(rows)} chunk rows, record says "
                             f"{row.chunk_count}"))
    if anchor is not None and anchor.size > row.chunk_count:
        found.append(Finding("chunk_count", None, f"the signed checkpoint covers {anchor.size} "
                             f"chunks, the record says {row.chunk_count}"))
    at_anchor = anchor is not None and anchor.size == row.chunk_count
    signed_offset = anchor.plaintext_size if anchor is not None and at_anchor else None
    signed_sealed = anchor.sealed_size if anchor is not None and at_anchor else None
    if row.offset != offset or (signed_offset is not None and row.offset != signed_offset):
        found.append(Finding("offset", None, "the record's committed offset disagrees with its "
                             "chunk rows or signed checkpoint"))
    if labels_differ(row, anchor):
        found.append(Finding("labels", None, "differ from the labels the checkpoint signed"))
    sealed_bytes = row.sealed_bytes
    if sealed_bytes != sealed or (signed_sealed is not None and sealed_bytes != signed_sealed):
        found.append(Finding("sealed_bytes", None, "the record's sealed bytes disagree with its "
                             "chunk rows or signed checkpoint"))
    return found


def manifest_findings(row: SessionRow, rows: Sequence[ChunkRow],
                      manifest: Manifest) -> list[Finding]:
    """Return each field of the record and of its chunk rows that differs from the manifest."""
    signed: Mapping[str, Any] = {
        "root_hash": manifest.root_hash.hex(), "chunk_count": manifest.chunk_count,
        "offset": manifest.plaintext_size, "sealed_bytes": manifest.sealed_size,
        "labels": dict(manifest.labels), "created_at": manifest.created_at,
        "chunk_size": manifest.chunk_size, "zstd_level": manifest.zstd_level,
        "format_version": manifest.format_version}
    found = [Finding(name, None, "differs from the signed manifest")
             for name, value in signed.items() if getattr(row, name) != value]
    for i, entry in enumerate(manifest.chunks):
        stored = rows[i] if i < len(rows) else None
        if stored is None:
            found.append(Finding("chunk_row", i, "the signed manifest lists a chunk with no row"))
            continue
        found += [Finding(name, i, "differs from the signed manifest") for name in _ROW_FIELDS
                  if getattr(stored, name) != getattr(entry, name)]
    found += [Finding("chunk_row", r.index, "a chunk row the signed manifest does not list")
              for r in rows[manifest.chunk_count:]]
    return found


def resolve_leaves(leaves: Sequence[bytes], anchor: Anchor,
                   facts: Mapping[int, ChunkFacts]) -> tuple[list[bytes], list[Finding]] | None:
    """Return the signed leaf hashes and the rows that misstate them, or None if undecidable.

    Called when the stored leaf hashes do not extend the anchor.  Each row whose
    chunk bytes hash to something else is either a damaged row or a damaged chunk;
    the assignment whose tree has the anchor's root is the signed truth (a row is
    preferred as the culprit: one guess per disagreeing row, then all subsets, up
    to MAX_GUESSES trees).
    """
    size = anchor.size
    if size > len(leaves):
        return None
    differ = [i for i in range(size) if (f := facts.get(i)) is not None
              and f.leaf is not None and len(f.leaf) == 32 and f.leaf != leaves[i]]
    for chosen in _guesses(differ):
        trial = list(leaves)
        for i in chosen:
            trial[i] = facts[i].leaf or b""
        if root_hash(trial[:size]) == anchor.checkpoint.root_hash:
            return trial, [Finding("leaf_hash", i, "the row's leaf hash is not the signed one; "
                                   "the chunk's bytes are") for i in chosen]
    return None


def _guesses(differ: list[int]) -> Iterable[tuple[int, ...]]:
    """Yield subsets of `differ` to try, most likely first: all, then each alone, then the rest."""
    yield tuple(differ)
    if len(differ) > 1:
        yield from ((i,) for i in differ)
    tried = 1 + (len(differ) if len(differ) > 1 else 0)
    if len(differ) > 6:
        return
    for mask in range(1, 1 << len(differ)):
        if tried >= MAX_GUESSES:
            return
        subset = tuple(i for bit, i in enumerate(differ) if mask >> bit & 1)
        if 1 < len(subset) < len(differ):
            tried += 1
            yield subset


def row_fact_findings(rows: Sequence[ChunkRow], facts: Mapping[int, ChunkFacts],
                      trusted: Sequence[bytes]) -> list[Finding]:
    """Return row fields that disagree with the bytes of a chunk that matches its signed leaf."""
    found: list[Finding] = []
    for i, f in sorted(facts.items()):
        if i >= len(rows) or i >= len(trusted) or f.leaf != trusted[i] or f.length is None:
            continue
        r = rows[i]
        actual = {"length": f.length, "sealed_length": f.sealed_length,
                  "compressed": f.compressed}
        found += [Finding(name, i, "differs from the chunk's signed bytes")
                  for name, value in actual.items() if getattr(r, name) != value]
    return found


def anchor_or_finding(signed: bytes | None, *, verifier: NoteVerifier, origin: str
                      ) -> tuple[Anchor | None, Finding | None]:
    """Return the opened anchor, or a finding saying why it cannot be used."""
    if signed is None:
        return None, None
    try:
        return open_anchor(signed, verifier=verifier, origin=origin), None
    except CoreError:
        return None, Finding("checkpoint", None, "the kept checkpoint fails its signature")


def chunk_verdicts(facts: dict[int, ChunkFacts], trusted: list[bytes]) -> list[dict[str, Any]]:
    """Return the bad chunks: missing, altered (bytes are not the signed leaf), unopenable."""
    bad: list[dict[str, Any]] = []
    for i, f in sorted(facts.items()):
        if f.leaf is None:
            bad.append({"index": i, "reason": "missing"})
        elif f.overflow or i >= len(trusted) or f.leaf != trusted[i]:
            bad.append({"index": i, "reason": "altered"})
        elif not f.opens:
            bad.append({"index": i, "reason": "unopenable"})
    return bad


def verify_report(row: SessionRow, count: int, indexes: list[int], root_ok: bool | None,
                  signature_ok: bool | None, bad: list[dict[str, Any]],
                  findings: list[Finding]) -> dict[str, Any]:
    """Return the verify report (docs/architecture.md); the caller sets `ok` last."""
    return {"session_id": row.id, "state": row.state.value, "chunk_count": count,
            "checked": len(indexes), "sampled": len(indexes) != count, "ok": False,
            "root_ok": root_ok, "signature_ok": signature_ok, "bad_chunks": bad,
            "metadata_findings": [f.to_json() for f in unique(findings)]}


def unique(findings: list[Finding]) -> list[Finding]:
    """Return the findings once per (what, index): the record's first, then by row index."""
    seen: set[tuple[str, int | None]] = set()
    out = []
    for f in findings:
        if (f.what, f.index) not in seen:
            seen.add((f.what, f.index))
            out.append(f)
    return sorted(out, key=lambda f: (f.index is not None, f.index or 0, f.what))
