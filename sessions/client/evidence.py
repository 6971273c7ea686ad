"""Evidence on the command line: export a session to a bundle, verify a bundle offline,
read and verify the audit log.

A bundle (docs/evidence-bundle.md) is a tar of the index, the manifest, the signed
checkpoint and every sealed chunk: public data only, no plaintext, no key but the
verifier keys.  `verify_bundle` opens no socket; it hands the bundle's pieces to
`cli_verify.verify_offline`, the same checks `lucid-sessions verify` runs online.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sessions.client._client import LucidClient
from sessions.client.verify import (
    OfflineReport,
    VerificationError,
    _core,
    compromise_problem,
    open_verifier,
    signing_key_of,
    verify_offline,
)
from sessions.contract.models import AuditEntryModel

_CHUNK_MEMBER = re.compile(r"chunks/([0-9]{10})\.lcs")
MAX_META_MEMBER = 64 << 20
"""The largest index, manifest or checkpoint member read from a bundle (bytes)."""


# -- export ----------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def export_bundle(client: LucidClient, session_id: str, out: Path, *,
                  on_chunk: Callable[[int], None] | None = None) -> int:
    """Write the session's bundle to `out` (atomically); return its chunk count.

    Uses read-only gateway calls an auditor token may make: node, manifest,
    checkpoint and sealed chunks.  Raises VerificationError if a chunk is missing.
    """
    core = _core()
    node = client.node()
    manifest = client.manifest(session_id)
    checkpoint = client.checkpoint(session_id)
    count = core.Manifest.from_json(manifest).chunk_count
    history = ([p.model_dump() for p in node.key_history]
               or [{"verifier_key": node.verifier_key}])
    now = time.time()
    index = core.BundleIndex(
        session_id=session_id, chunk_count=count, key_name=node.key_name,
        exported_at=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        key_history=core.key_history_from_json(history))
    tmp = out.with_name(out.name + ".part")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "index.json", index.to_json(), now)
            _add(tar, "manifest.json", manifest, now)
            _add(tar, "checkpoint.note", checkpoint, now)
            for i in range(count):
                sealed = client.sealed_chunk(session_id, i)
                if sealed is None:
                    raise VerificationError(f"chunk {i} is missing on the node; "
                                            "nothing exported")
                _add(tar, core.bundle_chunk_name(i), sealed, now)
                if on_chunk is not None:
                    on_chunk(len(sealed))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return int(count)


# -- verify a bundle, offline ------------------------------------------------------------------

@dataclass
class BundleReport:
    """The outcome of `verify_bundle`: the offline report plus what the bundle adds."""

    index: Any
    report: OfflineReport
    key_note: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems


class _Members:
    """The tar's regular-file members by name; anything else is a problem, not a file."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.files: dict[str, tarfile.TarInfo] = {}
        self.problems: list[str] = []
        for info in tar.getmembers():
            if not info.isfile():
                self.problems.append(f"member {info.name!r} is not a regular file")
            elif info.name in self.files:
                self.problems.append(f"member {info.name!r} appears twice")
            else:
                self.files[info.name] = info

    def read(self, name: str, limit: int) -> bytes | None:
        """Return a member's bytes, None if absent; VerificationError if larger than limit."""
        info = self.files.get(name)
        if info is None:
            return None
        if info.size > limit:
            raise VerificationError(f"member {name} is larger than any valid one")
        fh = self.tar.extractfile(info)
        return None if fh is None else fh.read()

    def required(self, name: str) -> bytes:
        data = self.read(name, MAX_META_MEMBER)
        if data is None:
            raise VerificationError(f"the bundle has no {name}")
        return data

    def chunk_indexes(self) -> Iterator[int]:
        for name in self.files:
            if (m := _CHUNK_MEMBER.fullmatch(name)) is not None:
                yield int(m.group(1))


def verify_bundle(path: Path, *, pinned: list[str] | None = None) -> BundleReport:
    """Return the report of checking a bundle offline; raise VerificationError if unreadable.

    With `pinned` verifier keys, only those are trusted; otherwise the bundle's own key
    history is (trust on first use, said in `key_note`).
    """
    core = _core()
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed below
    except (OSError, tarfile.TarError) as exc:
        raise VerificationError(f"{path} is not a readable tar bundle") from exc
    with tar:
        members = _Members(tar)
        try:
            index = core.BundleIndex.from_json(members.required("index.json"))
        except core.BundleError as exc:
            raise VerificationError(f"index.json: {exc}") from exc
        checkpoint = members.required("checkpoint.note")
        history = ([{"verifier_key": k} for k in pinned] if pinned
                   else [p.to_json() for p in index.key_history])
        period = signing_key_of(checkpoint, history)
        open_verifier(period.verifier_key)
        limit = core.sealed_length_bound(core.MAX_CHUNK_SIZE)
        report = verify_offline(index.session_id, verifier_key=period.verifier_key,
                                manifest=members.required("manifest.json"),
                                checkpoint=checkpoint,
                                fetch_chunk=lambda i: members.read(core.bundle_chunk_name(i),
                                                                   limit))
    out = BundleReport(index=index, report=report, problems=list(members.problems))
    out.key_note = ("the pinned key" if pinned else
                    "a key of the bundle's own key history (pin the node's key with --key "
                    "for an independent check)")
    if (problem := compromise_problem(period)) is not None:
        out.problems.append(problem)
    extra = sorted(i for i in members.chunk_indexes() if i >= report.chunk_count)
    if extra:
        out.problems.append(f"the bundle holds chunks the manifest does not list: {extra[:5]}")
    if index.chunk_count != report.chunk_count:
        out.problems.append("index.json's chunk count differs from the signed manifest's")
    allowed = set(core.BUNDLE_MEMBERS)
    strays = [n for n in members.files if n not in allowed and not _CHUNK_MEMBER.fullmatch(n)]
    if strays:
        out.problems.append(f"the bundle holds members the format does not define: {strays[:5]}")
    return out


# -- the audit log -----------------------------------------------------------------------------

@dataclass
class AuditReport:
    """The outcome of `verify_audit`: entries checked against the signed head."""

    size: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def audit_entries(client: LucidClient, *, session_id: str | None = None,
                  stop: int | None = None, page: int = 1000) -> Iterator[AuditEntryModel]:
    """Yield the audit log's entries in order, until `stop` (a seq) if given."""
    start: int | None = 0
    while start is not None and (stop is None or start < stop):
        body = client.audit_page(start=start, limit=page, session_id=session_id)
        for item in body.items:
            if stop is not None and item.seq >= stop:
                return
            yield item
        start = body.next_start


def verify_audit(client: LucidClient, *, history: list[dict[str, Any]]) -> AuditReport:
    """Return the findings of checking the whole audit log against its signed head.

    The head is read first; entries appended after it are not fetched.  The head's
    signer is picked from `history` by its signature line, then checked.
    """
    core = _core()
    signed = client.audit_checkpoint()
    if signed is None:
        return AuditReport()
    period = signing_key_of(signed, history)
    verifier = open_verifier(period.verifier_key)
    try:
        cp = core.open_checkpoint(signed, verifier=verifier,
                                  origin=core.audit_origin(verifier.name))
    except core.CoreError as exc:
        raise VerificationError("the audit log's signed head does not verify") from exc
    report = AuditReport(size=cp.size)
    if (problem := compromise_problem(period)) is not None:
        report.findings.append(problem)
    entries = []
    for item in audit_entries(client, stop=cp.size):
        try:
            entries.append(core.AuditEntry.from_json(item.model_dump()))
        except core.AuditError:
            report.findings.append(f"entry {item.seq} is malformed")
            return report
    try:
        core.verify_audit_log(entries, checkpoint=cp)
    except core.AuditError as exc:
        report.findings.extend(exc.findings)
    return report
