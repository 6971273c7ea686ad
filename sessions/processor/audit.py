"""The audit log's writer: one entry per successful action, and a freshly signed head.

The gateway knows who acts and from where; it passes both on every processor call
as `X-Lucid-Actor` (the token id, never the token) and `X-Lucid-Client` (the
client address), behind the service token, so only a gateway can set them.  A
route calls its bound recorder once, after the action succeeded:

    await audit("finalize", session_id)

The recorder builds the next link of the chain (`sessions.core.AuditEntry`) on the
head it knows, signs the head of the log ending with it as a C2SP checkpoint
(origin `<node>/audit`), and hands both to storage, which appends them in one
transaction unless another writer got there first (409: read the head, rebuild).
A lost entry (storage down) is logged and counted, never a failed action: the
action has already happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.datastructures import Headers

from sessions.common.errors import Conflict, ServiceError
from sessions.core import AuditEntry, Checkpoint, audit_origin, sign_checkpoint
from sessions.processor.keys import NodeKeys
from sessions.processor.storage_client import StorageClient

log = logging.getLogger("lucid.processor.audit")

ACTOR_HEADER = "X-Lucid-Actor"
CLIENT_HEADER = "X-Lucid-Client"
MAX_RACES = 20
_MAX_LEN = 128


def _clean(value: str | None) -> str | None:
    """Return a header value fit for an entry: printable, at most 128 characters, or None."""
    if not value or len(value) > _MAX_LEN or not value.isprintable():
        return None
    return value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditRecorder:
    """Appends entries to the audit log through storage; one chain across all writers."""

    def __init__(self, storage: StorageClient, keys: Callable[[], NodeKeys]) -> None:
        self._storage = storage
        self._keys = keys
        self._lock = asyncio.Lock()  # this process's appends in turn; storage settles the rest
        self._head: tuple[int, bytes] | None = None
        self.lost = 0

    async def record(self, action: str, session_id: str | None, *, actor: str, client: str,
                     detail: str = "") -> AuditEntry | None:
        """Return the appended entry, or None after logging why it could not be stored."""
        try:
            async with self._lock:
                return await self._append(action, session_id, actor, client, detail)
        except ServiceError as exc:
            self.lost += 1
            log.error("audit entry lost: %s of session %s by %s (%s)", action, session_id,
                      actor, exc.code)
            return None

    async def _append(self, action: str, session_id: str | None, actor: str, client: str,
                      detail: str) -> AuditEntry:
        for _ in range(MAX_RACES):
            size, head = self._head or await self._storage.audit_head()
            entry = AuditEntry(seq=size, at=_now(), action=action, actor=actor, client=client,
                               session_id=session_id, detail=detail, prev=head)
            keys = self._keys()
            signed = sign_checkpoint(Checkpoint(audit_origin(keys.signer.name), size + 1,
                                                entry.hash()), keys.signer)
            try:
                await self._storage.append_audit(entry, signed)
            except Conflict:
                self._head = None  # another writer appended: read the head again
                continue
            self._head = (size + 1, entry.hash())
            return entry
        raise Conflict("the audit log is changing too fast")

    def bind(self, headers: Headers, peer: str | None) -> BoundAudit:
        """Return a recorder for one request: its actor and client from the gateway's headers."""
        return BoundAudit(self, actor=_clean(headers.get(ACTOR_HEADER)) or "internal",
                          client=_clean(headers.get(CLIENT_HEADER)) or peer or "unknown")


@dataclass(frozen=True)
class BoundAudit:
    """`await audit(action, session_id, detail)`: record one action of this request."""

    recorder: AuditRecorder
    actor: str
    client: str

    async def __call__(self, action: str, session_id: str | None = None,
                       detail: str = "") -> None:
        await self.recorder.record(action, session_id, actor=self.actor, client=self.client,
                                   detail=detail)
