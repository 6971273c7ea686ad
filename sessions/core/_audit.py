"""The audit log's entries and hash chain, and its signed head as a C2SP checkpoint.

Each entry commits to the previous one: `prev` is the previous entry's hash
(32 zero bytes for entry 0), and an entry's hash is the RFC 9162 leaf hash of
its canonical encoding (`AuditEntry.encode`, defined once, here).  The head of
a log of n entries is signed as a checkpoint

    <node name>/audit
    <n>
    <base64(hash of entry n-1)>      (32 zero bytes while n == 0)

so a removed entry breaks the sequence or the chain, an edited entry breaks the
chain at its successor (or the head, if it was the last), and a truncated log
is shorter than the size its signed head states.

Spec: https://c2sp.org/tlog-checkpoint for the head; the chain is this project's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sessions.core._checkpoint import Checkpoint
from sessions.core._errors import AuditError
from sessions.core._merkle_hash import HASH_SIZE, leaf_hash

__all__ = ["AUDIT_GENESIS", "AuditEntry", "audit_head", "audit_origin", "verify_audit_log"]

AUDIT_GENESIS = bytes(HASH_SIZE)
"""The `prev` of entry 0, and the root of the empty log's signed head."""

_ACTION = re.compile(r"[a-z][a-z_]{0,31}")
_MAX_FIELD = 256


def _check_text(value: object, *, optional: bool = False) -> None:
    """Check a text field: a str of at most 256 printable characters (AuditError otherwise)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > _MAX_FIELD or not value.isprintable():
        raise AuditError(("malformed audit entry",))


@dataclass(frozen=True)
class AuditEntry:
    """One action: its sequence number, time, actor (token id), client address and target."""

    seq: int
    at: str
    action: str
    actor: str
    client: str
    session_id: str | None
    detail: str
    prev: bytes

    def __post_init__(self) -> None:
        """Check 0 ≤ seq < 2**63, len(prev) == 32, action ~ [a-z_]{1,32}, printable fields."""
        if type(self.seq) is not int or not 0 <= self.seq < 1 << 63:
            raise AuditError(("malformed audit entry",))
        if not isinstance(self.prev, bytes) or len(self.prev) != HASH_SIZE:
            raise AuditError(("malformed audit entry",))
        if not isinstance(self.action, str) or not _ACTION.fullmatch(self.action):
            raise AuditError(("malformed audit entry",))
        for value in (self.at, self.actor, self.client, self.detail):
            _check_text(value)
        _check_text(self.session_id, optional=True)

    def encode(self) -> bytes:
        """Return the canonical encoding: sorted-key, compact, ASCII-only JSON with `v: 1`."""
        return json.dumps(self._fields(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")

    def hash(self) -> bytes:
        """Return the entry's hash: RFC 9162 leaf hash of `encode()` (§2.1.1)."""
        return leaf_hash(self.encode())

    def _fields(self) -> dict[str, Any]:
        return {"v": 1, "seq": self.seq, "at": self.at, "action": self.action,
                "actor": self.actor, "client": self.client, "session": self.session_id,
                "detail": self.detail, "prev": self.prev.hex()}

    def to_json(self) -> dict[str, Any]:
        """Return the entry as a JSON object (the wire and storage shape)."""
        fields = self._fields()
        del fields["v"]
        return fields

    @classmethod
    def from_json(cls, d: Any) -> AuditEntry:
        """Return the entry of a JSON object from `to_json` (AuditError if malformed)."""
        try:
            return cls(seq=d["seq"], at=d["at"], action=d["action"], actor=d["actor"],
                       client=d["client"], session_id=d["session"], detail=d["detail"],
                       prev=bytes.fromhex(d["prev"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditError(("malformed audit entry",)) from exc


def audit_origin(node_name: str) -> str:
    """Return the origin line of a node's audit-log checkpoints."""
    return f"{node_name}/audit"


def audit_head(entries: Sequence[AuditEntry]) -> bytes:
    """Return the chain head of entries 0 .. n-1: the last entry's hash, or AUDIT_GENESIS."""
    return entries[-1].hash() if entries else AUDIT_GENESIS


def _chain_findings(entries: Sequence[AuditEntry]) -> list[str]:
    """Return where the sequence or the chain of `entries` (from entry 0) breaks."""
    findings: list[str] = []
    prev = AUDIT_GENESIS
    for position, entry in enumerate(entries):
        if entry.seq != position:
            findings.append(f"entry {position} is missing (the next stored entry is "
                            f"{entry.seq}): removed")
            break
        if entry.prev != prev:
            findings.append(f"entry {position - 1} was edited or replaced (entry {position} "
                            f"commits to another hash)" if position else
                            "entry 0 does not start the chain")
        prev = entry.hash()
    return findings


def verify_audit_log(entries: Sequence[AuditEntry], *, checkpoint: Checkpoint) -> None:
    """Check that entries 0 .. n-1 are exactly the log `checkpoint` signed; raise AuditError.

    Requires the checkpoint already opened (signature and origin checked).  Every
    break is reported, not only the first: a removed, edited or truncated entry.
    """
    findings = _chain_findings(entries)
    if len(entries) < checkpoint.size:
        findings.append(f"truncated: the signed head covers {checkpoint.size} entries, "
                        f"{len(entries)} are stored")
    elif len(entries) > checkpoint.size:
        findings.append(f"{len(entries) - checkpoint.size} entries after the signed head "
                        f"({checkpoint.size}) are not covered by a signature")
    else:
        if audit_head(entries) != checkpoint.root_hash:
            findings.append(f"the last entry ({len(entries) - 1}) differs from the signed head")
    if findings:
        raise AuditError(tuple(findings))
