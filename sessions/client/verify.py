"""Offline verification with public data only: no keys, no plaintext, no trust in the node.

Given the node's signed-note verifier key, a session's canonical manifest, a
signed checkpoint and the sealed chunks, check every link with `sessions.core`:

1. the checkpoint's signature, then its origin `<key name>/sessions/<id>`;
2. the manifest: canonical form, internal consistency, its embedded checkpoint;
3. manifest root == checkpoint root and sizes agree;
4. each (sampled) sealed chunk: present, header sane with the right index and
   length, sealed length and RFC 9162 leaf hash as in the manifest;
5. with every chunk checked, the root of the recomputed leaf hashes.

`sessions.core` is imported lazily so the rest of the CLI loads without it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class VerificationError(Exception):
    """Public data does not check out; the message says which link broke."""


def _core() -> Any:
    import sessions.core as core

    return core


@dataclass
class OfflineReport:
    """The outcome of `verify_offline`; `ok` only if every check passed."""

    session_id: str
    chunk_count: int = 0
    checked: int = 0
    signature_ok: bool = False
    root_ok: bool = False
    problems: list[str] = field(default_factory=list)
    bad_chunks: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.signature_ok and self.root_ok and not self.problems and not self.bad_chunks


def open_verifier(key_text: str) -> Any:
    """Return a NoteVerifier for a C2SP verifier key; raise VerificationError if malformed."""
    core = _core()
    try:
        return core.NoteVerifier.from_key_text(key_text.strip())
    except (core.CoreError, ValueError) as exc:
        raise VerificationError("the verifier key is not a valid signed-note key") from exc


def signing_key_of(signed: bytes, key_history: list[dict[str, Any]]) -> Any:
    """Return the KeyPeriod of the history whose key signed the note (VerificationError).

    Only picks the key, by the signature line's key name and hash: opening the note
    with it checks the signature.  Spec: c2sp.org/signed-note "Signatures".
    """
    core = _core()
    try:
        periods = core.key_history_from_json(key_history)
        return core.signing_period(signed, periods)
    except core.UnknownKeyError as exc:
        raise VerificationError("no key of the node's key history signed this note") from exc
    except core.CoreError as exc:
        raise VerificationError("the note or the key history is malformed") from exc


def compromise_problem(period: Any) -> str | None:
    """Return why a checkpoint by this key must not be trusted as is, or None."""
    if period.compromised_after is None:
        return None
    return (f"the signing key {period.verifier.key_hash:08x} is marked compromised after "
            f"{period.compromised_after}: trust this checkpoint only if you obtained it "
            f"before then (an earlier export, a witness cosignature)")


def pinned_history(keys: list[str]) -> list[dict[str, Any]]:
    """Return a key history of pinned verifier keys, with no times."""
    return [{"verifier_key": k.strip()} for k in keys if k.strip()]


def open_session_checkpoint(signed: bytes, *, verifier: Any, session_id: str) -> Any:
    """Return the checkpoint after its signature and origin verified (VerificationError)."""
    core = _core()
    origin = f"{verifier.name}/sessions/{session_id}"
    try:
        return core.open_checkpoint(signed, verifier=verifier, origin=origin)
    except core.CheckpointError as exc:
        raise VerificationError(f"the checkpoint is malformed or its origin is not {origin}") \
            from exc
    except core.NoteError as exc:
        raise VerificationError(f"the checkpoint's signature does not verify with key "
                                f"{verifier.name}") from exc


def verify_offline(session_id: str, *, verifier_key: str, manifest: bytes, checkpoint: bytes,
                   fetch_chunk: Callable[[int], bytes | None], sample: float = 100.0,
                   rng: random.Random | None = None,
                   on_chunk: Callable[[int], None] | None = None) -> OfflineReport:
    """Return the report of checking a finalized session against the node's verifier key.

    `fetch_chunk(i)` returns the sealed bytes of chunk i as stored, or None if
    missing.  Requires 0 < sample ≤ 100 (percent of chunks fetched and checked).
    """
    core = _core()
    report = OfflineReport(session_id)
    try:
        verifier = open_verifier(verifier_key)
        cp = open_session_checkpoint(checkpoint, verifier=verifier, session_id=session_id)
        report.signature_ok = True
    except VerificationError as exc:
        report.problems.append(str(exc))
        return report
    m = _open_manifest(core, report, manifest, verifier)
    if m is None:
        return report
    report.chunk_count = m.chunk_count
    if cp.size != m.chunk_count or cp.root_hash != m.root_hash:
        report.problems.append("the manifest's root or size differs from the signed checkpoint")
    indexes = _sample(m.chunk_count, sample, rng or random.SystemRandom())
    leaves: dict[int, bytes] = {}
    for i in indexes:
        sealed = fetch_chunk(i)
        reason = _chunk_problem(core, sealed, m.chunks[i])
        if reason is not None:
            report.bad_chunks.append((i, reason))
        if sealed is not None:
            leaves[i] = core.leaf_hash(sealed)
        if on_chunk is not None:
            on_chunk(i)
    report.checked = len(indexes)
    if len(indexes) == m.chunk_count:
        rebuilt = [leaves.get(i) for i in range(m.chunk_count)]
        report.root_ok = None not in rebuilt and core.root_hash(rebuilt) == cp.root_hash
    else:  # sampled: the manifest's own leaf hashes are what add up to the signed root
        report.root_ok = m.root_hash == cp.root_hash
    return report


def _open_manifest(core: Any, report: OfflineReport, manifest: bytes, verifier: Any) -> Any:
    """Return the parsed, checked manifest, or None after noting why it is unusable."""
    origin = f"{verifier.name}/sessions/{report.session_id}"
    try:
        m = core.Manifest.from_json(manifest)
        m.check(verifier=verifier, origin=origin)
    except core.ManifestError as exc:
        report.problems.append(f"manifest: {exc}")
        return None
    except core.NoteError:
        report.problems.append("the manifest's embedded checkpoint does not verify")
        return None
    if m.session_id != report.session_id:
        report.problems.append("the manifest belongs to another session")
        return None
    return m


def _sample(count: int, percent: float, rng: random.Random) -> list[int]:
    """Return the sorted chunk indexes to check: all at 100 %, else ⌈count·percent/100⌉."""
    if not 0 < percent <= 100:
        raise ValueError("sample must satisfy 0 < sample <= 100")
    if percent >= 100 or count == 0:
        return list(range(count))
    return sorted(rng.sample(range(count), max(1, math.ceil(count * percent / 100))))


def _chunk_problem(core: Any, sealed: bytes | None, entry: Any) -> str | None:
    """Return why a sealed chunk does not match its manifest entry, or None if it does."""
    if sealed is None:
        return "missing"
    try:
        header = core.parse_header(sealed)
    except core.HeaderError:
        return "altered (malformed header)"
    if header.index != entry.index:
        return f"altered (header names chunk {header.index})"
    if header.plaintext_length != entry.length or len(sealed) != entry.sealed_length:
        return "altered (length differs from the manifest)"
    if core.leaf_hash(sealed) != entry.leaf_hash:
        return "altered (leaf hash differs from the manifest)"
    return None


def check_inclusion(proof: dict[str, Any], *, checkpoint: bytes, verifier_key: str,
                    session_id: str) -> Any:
    """Return the signed checkpoint the inclusion proof verifies against (VerificationError).

    Requires proof = {"index", "size", "leaf_hash", "proof": [hex]} and a checkpoint
    of exactly `size` chunks.  Spec: RFC 9162 §2.1.3.2.
    """
    core = _core()
    cp = open_session_checkpoint(checkpoint, verifier=open_verifier(verifier_key),
                                 session_id=session_id)
    try:
        index, size = int(proof["index"]), int(proof["size"])
        leaf = bytes.fromhex(proof["leaf_hash"])
        path = [bytes.fromhex(h) for h in proof["proof"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError("the proof is malformed") from exc
    if cp.size != size:
        raise VerificationError(f"the checkpoint is for {cp.size} chunks, the proof for {size}")
    try:
        core.verify_inclusion(leaf, index=index, size=size, proof=path, root=cp.root_hash)
    except core.ProofError as exc:
        raise VerificationError("the inclusion proof does not lead to the signed root") from exc
    return cp
