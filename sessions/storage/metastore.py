"""The metadata store: the rules of the domain, once, above two small backends.

`MetadataStore` is all the routes know.  It decides: the state machine, the
offset and chunk-append checks, finalize idempotency, erase on delete, the
rewrap compare-and-set.  A `MetadataBackend` only stores, reads and
compares-and-sets (`Update`, applied only if the record's revision is still the
one the rules read), so concurrency is settled by the database: two storage
processes on one database can never both commit from the same state.  A lost
race re-reads the record and decides again.

`open_backend(url)` picks the backend from `LUCID_METADATA_URL`:
`sqlite:///path` (`sqlite_backend`) or `mongodb://` / `mongodb+srv://`
(`mongo_backend`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from sessions.common.errors import (
    BadRequest,
    Conflict,
    InvalidParameter,
    InvalidState,
    LeaseLost,
    LegalHold,
    MetadataCorrupt,
    NotFound,
    SessionNotFound,
    UploadInProgress,
)
from sessions.common.ids import check_session_id
from sessions.common.states import SessionState, check_transition, require_state
from sessions.common.tokens import Role, check_token_id
from sessions.core import AUDIT_GENESIS, AuditEntry, AuditError
from sessions.storage.dburl import MetadataUrl
from sessions.storage.errors import ChunkCommitted, StorageUnavailable
from sessions.storage.records import (
    LEAF_HASH_SIZE,
    ChunkRecord,
    Finalized,
    NewSession,
    SessionRecord,
    TokenRecord,
    Update,
    WrappedKey,
    check_commit,
    check_lease,
    check_upload_length,
)

Label = tuple[str, str]
T = TypeVar("T")
MAX_RACES = 20
MAX_LEASE_SECONDS = 3600.0
"""A compare-and-set lost this many times in a row means a hot spot: fail with 503, not spin."""


class MetadataBackend(Protocol):
    """Stores records, compares-and-sets them; raises `StorageUnavailable` when its database fails.

    It holds no rule of the domain: every decision is the caller's.
    """

    async def prepare(self) -> None:
        """Connect, run schema migrations and build indexes; idempotent."""
    async def insert_session(self, rec: SessionRecord) -> bool:
        """Store a new record; return False (and store nothing) if its id exists."""
    async def load_session(self, session_id: str) -> SessionRecord | None: ...
    async def apply(self, update: Update) -> bool:
        """Apply update atomically iff the stored revision is update.session.revision - 1."""
    async def list_sessions(self, *, state: SessionState | None, labels: Sequence[Label],
                            cursor: str | None, limit: int) -> list[SessionRecord]:
        """Return up to limit records with id < cursor, matching all filters, by id descending."""
    async def list_chunks(self, session_id: str, *, start: int, stop: int,
                          limit: int) -> list[ChunkRecord]:
        """Return up to limit chunk records with start <= index < stop, by index."""
    async def leaf_hashes(self, session_id: str, *, count: int) -> bytes:
        """Return the leaf hashes of chunks 0 .. count-1, concatenated."""
    async def load_finalized(self, session_id: str) -> Finalized | None: ...
    async def load_checkpoint(self, session_id: str) -> str | None: ...
    async def count_by_state(self) -> dict[str, int]: ...
    async def insert_token(self, rec: TokenRecord) -> bool:
        """Store a new API token record; return False (and store nothing) if its id exists."""
    async def load_token(self, token_id: str) -> TokenRecord | None: ...
    async def list_tokens(self) -> list[TokenRecord]:
        """Return every token record, by created_at then id."""
    async def revoke_token(self, token_id: str, *, at: str) -> bool:
        """Set revoked_at = at iff the token exists and is not revoked; return whether it did."""
    async def list_expired(self, *, before: str, limit: int) -> list[SessionRecord]:
        """Return up to limit records not under hold with expires_at <= before, oldest first.

        Erased records have no expires_at, so they are never returned (an indexed query).
        """
    async def list_idle(self, *, state: SessionState, before: str,
                        limit: int) -> list[SessionRecord]:
        """Return up to limit records in state with updated_at < before, oldest first."""
    async def key_usage(self) -> dict[str, int]:
        """Return how many records hold a wrapped key under each key id."""
    async def append_audit(self, entry: AuditEntry, checkpoint: str) -> bool:
        """Store entry and make checkpoint the head, atomically; False if entry.seq is taken."""
    async def list_audit(self, *, start: int, session_id: str | None,
                         limit: int) -> list[AuditEntry]:
        """Return up to limit entries with seq >= start (of session_id, if given), by seq."""
    async def last_audit(self) -> AuditEntry | None: ...
    async def load_audit_checkpoint(self) -> tuple[int, str] | None:
        """Return (size, signed head) as last stored with an entry, or None before any."""
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Return moment as an RFC 3339 UTC timestamp with microseconds and a `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MetadataStore:
    """Session and chunk metadata with the domain's rules; raises `ServiceError`s only."""

    def __init__(self, backend: MetadataBackend, *,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.backend = backend
        self._clock = clock

    async def prepare(self) -> None:
        await self.backend.prepare()

    async def ping(self) -> None:
        await self.backend.ping()

    async def close(self) -> None:
        await self.backend.close()

    # -- reads ---------------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord:
        """Return the record; raise SessionNotFound if there is none."""
        rec = await self.backend.load_session(check_session_id(session_id))
        if rec is None:
            raise SessionNotFound()
        return rec

    async def _live_session(self, session_id: str) -> SessionRecord:
        """Return the record; raise InvalidState (409) if it was deleted (its data went with it)."""
        rec = await self.get_session(session_id)
        if rec.state is SessionState.DELETED:
            raise InvalidState("the session was deleted; its chunks are gone",
                               extra={"state": rec.state.value})
        return rec

    async def list_sessions(self, *, state: SessionState | None = None,
                            labels: Sequence[Label] = (), cursor: str | None = None,
                            limit: int = 50) -> tuple[list[SessionRecord], str | None]:
        """Return one page, newest (largest id) first, and the cursor of the next page or None."""
        if cursor is not None:
            check_session_id(cursor)
        if limit < 1:
            raise InvalidParameter("limit must be at least 1")
        rows = await self.backend.list_sessions(state=state, labels=tuple(labels),
                                                cursor=cursor, limit=limit + 1)
        page = rows[:limit]
        return page, page[-1].id if len(rows) > limit else None

    async def list_chunks(self, session_id: str, *, start: int = 0,
                          limit: int = 1000) -> list[ChunkRecord]:
        """Return committed chunk records from index start on (start >= 0, limit >= 1)."""
        if start < 0 or limit < 1:
            raise InvalidParameter("start must be >= 0 and limit >= 1")
        rec = await self._live_session(session_id)
        return await self.backend.list_chunks(session_id, start=start, stop=rec.chunk_count,
                                              limit=limit)

    async def committed_chunk(self, rec: SessionRecord, index: int) -> ChunkRecord:
        """Return the row of committed chunk `index` of rec (0 <= index < rec.chunk_count).

        A row missing below chunk_count is 502 `metadata_corrupt`.
        """
        rows = await self.backend.list_chunks(rec.id, start=index, stop=rec.chunk_count, limit=1)
        if not rows or rows[0].index != index:
            raise MetadataCorrupt(f"committed chunk {index} has no stored row")
        return rows[0]

    async def leaf_hashes(self, session_id: str, *, size: int | None = None) -> bytes:
        """Return the first `size` (default all) leaf hashes; 0 <= size <= chunk_count."""
        if size is not None and size < 0:
            raise InvalidParameter("size must be >= 0")
        rec = await self._live_session(session_id)
        if size is not None and size > rec.chunk_count:
            raise InvalidParameter(f"size {size} exceeds the {rec.chunk_count} committed chunks",
                                   extra={"chunk_count": rec.chunk_count})
        return await self.backend.leaf_hashes(
            session_id, count=rec.chunk_count if size is None else size)

    async def get_manifest(self, session_id: str) -> bytes:
        """Return the manifest bytes as stored, whatever the state says.

        None stored: InvalidState (409) unless the session is completed, NotFound if it is.
        A deleted session's manifest is gone with it: InvalidState (409), as for its chunks.
        """
        rec = await self.get_session(session_id)
        if rec.state is SessionState.DELETED:
            require_state(rec.state, SessionState.COMPLETED, action="read the manifest of")
        done = None if rec.root_hash is None else await self.backend.load_finalized(session_id)
        if done is None:
            require_state(rec.state, SessionState.COMPLETED, action="read the manifest of")
            raise NotFound("the completed session has no stored manifest")
        return done.manifest

    async def get_checkpoint(self, session_id: str) -> str | None:
        """Return the last signed checkpoint kept for the session (the final one once completed).

        409 `invalid_state` once the session is deleted, as for its chunks and leaves.
        """
        await self._live_session(session_id)
        return await self.backend.load_checkpoint(session_id)

    async def count_by_state(self) -> dict[str, int]:
        counts = {state.value: 0 for state in SessionState}
        counts.update(await self.backend.count_by_state())
        return counts

    async def list_expired(self, *, before: str, limit: int) -> list[SessionRecord]:
        """Return up to limit live sessions, not under hold, that expired at or before `before`.

        Preconditions: before is an RFC 3339 UTC timestamp as `rfc3339` writes it; limit >= 1.
        """
        return await self.backend.list_expired(before=_timestamp(before), limit=_limit(limit))

    async def list_idle(self, *, state: SessionState, before: str,
                        limit: int) -> list[SessionRecord]:
        """Return up to limit sessions in `state` (recording, finalizing) unchanged since before."""
        require_state(state, SessionState.RECORDING, SessionState.FINALIZING,
                      action="list idle sessions of")
        return await self.backend.list_idle(state=state, before=_timestamp(before),
                                            limit=_limit(limit))

    async def key_usage(self) -> dict[str, int]:
        """Return {key id: sessions whose wrapped key is under it}; erased sessions hold none."""
        return await self.backend.key_usage()

    # -- writes: decide on a fresh read, then compare-and-set ----------------------------------

    async def create_session(self, new: NewSession) -> SessionRecord:
        """Return the new recording session; raise Conflict if the id exists."""
        check_session_id(new.id)
        if new.upload_length is not None and new.upload_length < 0:
            raise InvalidParameter("upload_length must be >= 0")
        moment = self._clock()
        now = rfc3339(moment)
        expires = (None if new.retention_days is None
                   else rfc3339(moment + timedelta(days=new.retention_days)))
        rec = SessionRecord(
            id=new.id, state=SessionState.RECORDING, labels=dict(new.labels), created_at=now,
            updated_at=now, retention_days=new.retention_days, offset=0, chunk_count=0,
            sealed_bytes=0, chunk_size=new.chunk_size, zstd_level=new.zstd_level,
            format_version=new.format_version, root_hash=None, wrapped_key=new.wrapped_key,
            upload_length=new.upload_length, revision=1, owner=new.owner, expires_at=expires)
        if not await self.backend.insert_session(rec):
            raise Conflict("a session with this id already exists")
        return rec

    async def transition(self, session_id: str, *, to: SessionState,
                         allowed_from: Collection[SessionState] | None = None,
                         lease_token: int | None = None) -> SessionRecord:
        """Return the record in state `to`; raise InvalidState unless the machine allows it.

        With a lease_token, fenced like a commit (`check_lease`, 409 lease_lost) in the
        same compare-and-set; without one, not fenced (the gateway's and admin's changes).
        """
        def decide(rec: SessionRecord) -> Update:
            if lease_token is not None:
                check_lease(rec, lease_token)
            if allowed_from is not None:
                require_state(rec.state, *allowed_from, action="change the state of")
            check_transition(rec.state, to)
            if to is SessionState.DELETED:  # whatever path leads to deleted, the key goes
                return self._erased(rec)
            return Update(self._next(rec, state=to))
        return await self._cas(session_id, decide)

    async def commit_chunks(self, session_id: str, *, expected_offset: int,
                            chunks: Sequence[ChunkRecord],
                            lease_token: int | None = None) -> SessionRecord:
        """Append chunks at the committed offset; return the record after.

        The fencing token is checked first (`check_lease`, 409 lease_lost), in the same
        compare-and-set as the append: a lease taken over meanwhile moves the revision.
        A repeat of a commit that already went through (every chunk committed, identical)
        returns the record unchanged; a different chunk at a committed index is refused
        (409 chunk_committed).  Otherwise the preconditions of `check_commit` hold.
        """
        batch = tuple(chunks)
        while True:
            rec = await self.get_session(session_id)
            check_lease(rec, lease_token)
            if await self._already_committed(rec, batch):
                return rec
            check_commit(rec, expected_offset=expected_offset, chunks=batch)
            if not batch:
                return rec
            after = self._next(rec, offset=rec.offset + sum(c.length for c in batch),
                               chunk_count=rec.chunk_count + len(batch),
                               sealed_bytes=rec.sealed_bytes + sum(c.sealed_length for c in batch))
            if await self.backend.apply(Update(after, chunks=batch)):
                return after

    async def finalize(self, session_id: str, *, root_hash: bytes, checkpoint: str,
                       manifest: bytes, lease_token: int | None = None) -> SessionRecord:
        """Complete a finalizing session; a repeat with the same root hash is a no-op.

        Preconditions: len(root_hash) == 32; state == finalizing, or completed with root_hash;
        lease_token passes `check_lease` (409 lease_lost: stale, or absent while a writer
        holds the lease), in the same compare-and-set.
        """
        if len(root_hash) != LEAF_HASH_SIZE:
            raise BadRequest("root_hash must be 32 bytes")

        def decide(rec: SessionRecord) -> Update | None:
            if rec.state is SessionState.COMPLETED:
                if rec.root_hash != root_hash:
                    raise Conflict("the session was completed with another root hash")
                return None
            require_state(rec.state, SessionState.FINALIZING, action="finalize")
            check_lease(rec, lease_token)
            return Update(self._next(rec, state=SessionState.COMPLETED, root_hash=root_hash),
                          finalized=Finalized(checkpoint=checkpoint, manifest=manifest))
        return await self._cas(session_id, decide)

    async def erase(self, session_id: str) -> SessionRecord:
        """Crypto-erase: drop the wrapped key and mark the session deleted; idempotent."""
        def decide(rec: SessionRecord) -> Update | None:
            if rec.state is SessionState.DELETED and rec.wrapped_key is None:
                return None
            return self._erased(rec)
        return await self._cas(session_id, decide)

    async def replace_wrapped_key(self, session_id: str, *, expected_key_id: str,
                                  wrapped: WrappedKey) -> SessionRecord:
        """Swap a session's wrapped key (master key rotation), if it still has expected_key_id.

        Raises InvalidState if the key was erased, Conflict if another key id is stored.
        """
        def decide(rec: SessionRecord) -> Update:
            if rec.wrapped_key is None:
                raise InvalidState("the session's key was erased", extra={"state": rec.state.value})
            if rec.wrapped_key.key_id != expected_key_id:
                raise Conflict("the session's key is wrapped under another master key",
                               extra={"key_id": rec.wrapped_key.key_id})
            return Update(self._next(rec, wrapped_key=wrapped), forget_key=True)
        return await self._cas(session_id, decide)

    async def set_hold(self, session_id: str, *, hold: bool, expected_key_id: str,
                       wrapped: WrappedKey) -> SessionRecord:
        """Set or release the legal hold, swapping the wrapped key in the same compare-and-set.

        The processor rewraps a held session's key under its master key (and a released
        one under its retention period's key), so both change together or not at all.
        Raises InvalidState if the key was erased, Conflict if another key id is stored.
        """
        def decide(rec: SessionRecord) -> Update:
            if rec.wrapped_key is None:
                raise InvalidState("the session's key was erased", extra={"state": rec.state.value})
            if rec.wrapped_key.key_id != expected_key_id:
                raise Conflict("the session's key is wrapped under another key",
                               extra={"key_id": rec.wrapped_key.key_id})
            return Update(self._next(rec, legal_hold=hold, wrapped_key=wrapped), forget_key=True)
        return await self._cas(session_id, decide)

    async def set_upload_length(self, session_id: str, length: int,
                                lease_token: int | None = None) -> SessionRecord:
        """Declare a session's total length once (`check_upload_length`); return the record.

        Fenced like a commit (`check_lease`, 409 lease_lost), in the same compare-and-set:
        a writer paused past its lease cannot declare a length after another took over.
        """
        if length < 0:
            raise InvalidParameter("upload_length must be >= 0")

        def decide(rec: SessionRecord) -> Update | None:
            check_lease(rec, lease_token)
            if not check_upload_length(rec, length):
                return None
            return Update(self._next(rec, upload_length=length))
        return await self._cas(session_id, decide)

    async def set_checkpoint(self, session_id: str, checkpoint: str,
                             lease_token: int | None = None) -> None:
        """Keep the processor's last signed checkpoint of a recording or finalizing session.

        The record itself (updated_at included) is unchanged; only its revision moves.
        Fenced like a commit (`check_lease`): a stalled writer cannot move the anchor back.
        """
        def decide(rec: SessionRecord) -> Update:
            require_state(rec.state, SessionState.RECORDING, SessionState.FINALIZING,
                          action="keep a checkpoint of")
            check_lease(rec, lease_token)
            return Update(dataclasses.replace(rec, revision=rec.revision + 1),
                          checkpoint=checkpoint)
        await self._cas(session_id, decide)

    # -- writer leases: one writer per session across processes, fenced by a token -----------

    async def acquire_lease(self, session_id: str, *, holder: str, ttl: float,
                            now: datetime | None = None) -> SessionRecord:
        """Take the session's writer lease for ttl seconds; return the record holding it.

        The new fencing token is the last one plus one (never reused).  A lease another
        holder still holds (expires_at > now) is refused with 409 `upload_in_progress`;
        an expired one is taken over.  Re-acquiring one's own lease fences the old token.
        Preconditions: holder is 1..64 characters; 0 < ttl <= MAX_LEASE_SECONDS.
        """
        moment = self._lease_args(holder, ttl, now)

        def decide(rec: SessionRecord) -> Update:
            if rec.state is SessionState.DELETED:
                raise InvalidState("the session was deleted", extra={"state": rec.state.value})
            if (rec.lease_holder is not None and rec.lease_holder != holder
                    and rec.lease_expires is not None and rec.lease_expires > rfc3339(moment)):
                raise UploadInProgress("another writer holds the session's lease",
                                       extra={"lease_expires": rec.lease_expires})
            return Update(dataclasses.replace(
                rec, revision=rec.revision + 1, lease_token=rec.lease_token + 1,
                lease_holder=holder, lease_expires=rfc3339(moment + timedelta(seconds=ttl))))
        return await self._cas(session_id, decide)

    async def renew_lease(self, session_id: str, *, holder: str, token: int, ttl: float,
                          now: datetime | None = None) -> SessionRecord:
        """Extend the lease to now + ttl; 409 `lease_lost` unless holder still holds token."""
        moment = self._lease_args(holder, ttl, now)

        def decide(rec: SessionRecord) -> Update:
            if rec.lease_holder != holder:
                raise LeaseLost(extra={"lease_token": rec.lease_token})
            check_lease(rec, token)
            return Update(dataclasses.replace(
                rec, revision=rec.revision + 1,
                lease_expires=rfc3339(moment + timedelta(seconds=ttl))))
        return await self._cas(session_id, decide)

    async def release_lease(self, session_id: str, *, holder: str, token: int) -> SessionRecord:
        """Give the lease up if holder still holds token (else nothing: idempotent).

        The token counter stays: the next acquire gets a larger one.
        """
        def decide(rec: SessionRecord) -> Update | None:
            if rec.lease_holder != holder or rec.lease_token != token:
                return None
            return Update(dataclasses.replace(rec, revision=rec.revision + 1,
                                              lease_holder=None, lease_expires=None))
        return await self._cas(session_id, decide)

    def _lease_args(self, holder: str, ttl: float, now: datetime | None) -> datetime:
        """Return the moment to reckon from (now, or the clock's); check holder and ttl."""
        if not 1 <= len(holder) <= 64 or not holder.isprintable():
            raise InvalidParameter("a lease holder is 1 to 64 printable characters")
        if not 0 < ttl <= MAX_LEASE_SECONDS:
            raise InvalidParameter(f"a lease lasts 0 < ttl <= {MAX_LEASE_SECONDS:.0f} seconds")
        return self._clock() if now is None else now

    # -- API tokens: stored hashed, revoked (never deleted) -----------------------------------

    async def create_token(self, rec: TokenRecord) -> TokenRecord:
        """Return the stored token (created_at set now); raise Conflict if its id exists.

        Preconditions: a token id; a known role; len(secret_hash) == 32.
        """
        check_token_id(rec.id)
        if rec.role not in set(Role) or len(rec.secret_hash) != LEAF_HASH_SIZE or not rec.name:
            raise BadRequest("a token needs a name, a known role and a 32-byte secret hash")
        stored = dataclasses.replace(rec, created_at=self._now(), revoked_at=None)
        if not await self.backend.insert_token(stored):
            raise Conflict("a token with this id already exists")
        return stored

    async def get_token(self, token_id: str) -> TokenRecord:
        """Return the token record; raise NotFound if there is none."""
        rec = await self.backend.load_token(check_token_id(token_id))
        if rec is None:
            raise NotFound("no such token")
        return rec

    async def list_tokens(self) -> list[TokenRecord]:
        return await self.backend.list_tokens()

    async def revoke_token(self, token_id: str) -> TokenRecord:
        """Return the token revoked (now, or when it first was: idempotent); NotFound if none."""
        await self.get_token(token_id)
        await self.backend.revoke_token(token_id, at=self._now())
        return await self.get_token(token_id)
    # -- the audit log: append-only, one chain -------------------------------------------------

    async def audit_head(self) -> tuple[int, bytes]:
        """Return (entries stored, hash of the last entry or AUDIT_GENESIS)."""
        last = await self._audit_read(self.backend.last_audit())
        return (0, AUDIT_GENESIS) if last is None else (last.seq + 1, last.hash())

    async def append_audit(self, entry: AuditEntry, checkpoint: str) -> int:
        """Append entry, the next link of the chain, with its signed head; return the new size.

        Requires entry.seq == entries stored and entry.prev == the last entry's hash, and
        no fewer entries than the stored signed head covers (502 `metadata_corrupt`);
        otherwise (another append won the race) 409 `conflict` with the current `size`,
        and the caller builds its entry again on the new head.
        """
        signed = await self.backend.load_audit_checkpoint()  # first: appends only grow it
        size, head = await self.audit_head()
        if size < (0 if signed is None else signed[0]):
            raise MetadataCorrupt("the stored audit log is shorter than its signed head "
                                  "(entries removed): nothing appended")
        if entry.seq != size or entry.prev != head or not checkpoint:
            raise Conflict("the audit log moved on: rebuild the entry on its head",
                           extra={"size": size})
        if not await self.backend.append_audit(entry, checkpoint):
            raise Conflict("the audit log moved on: rebuild the entry on its head",
                           extra={"size": size + 1})
        return size + 1

    async def list_audit(self, *, start: int = 0, session_id: str | None = None,
                         limit: int = 100) -> tuple[list[AuditEntry], int | None]:
        """Return entries from seq start on (of one session if given) and the next start."""
        if start < 0 or limit < 1:
            raise InvalidParameter("start must be >= 0 and limit >= 1")
        if session_id is not None:
            check_session_id(session_id)
        rows = await self._audit_read(self.backend.list_audit(
            start=start, session_id=session_id, limit=limit + 1))
        page = rows[:limit]
        return page, page[-1].seq + 1 if len(rows) > limit else None

    async def audit_checkpoint(self) -> str | None:
        """Return the signed head of the audit log, or None before the first entry."""
        signed = await self.backend.load_audit_checkpoint()
        return None if signed is None else signed[1]

    @staticmethod
    async def _audit_read(pending: Awaitable[T]) -> T:
        """Await a backend read of audit entries; a stored entry that breaks a core rule is 502."""
        try:
            return await pending
        except AuditError as exc:
            raise MetadataCorrupt("a stored audit entry is malformed") from exc

    # -- helpers -------------------------------------------------------------------------------

    def _now(self) -> str:
        return rfc3339(self._clock())

    def _next(self, rec: SessionRecord, **changes: object) -> SessionRecord:
        """Return rec with changes, a fresh updated_at and the next revision."""
        return dataclasses.replace(rec, updated_at=self._now(), revision=rec.revision + 1,
                                   **changes)  # type: ignore[arg-type]

    def _erased(self, rec: SessionRecord) -> Update:
        """Return the erasing update; raise LegalHold (409) while the session is held."""
        if rec.legal_hold:
            raise LegalHold()
        return Update(self._next(rec, state=SessionState.DELETED, wrapped_key=None,
                                 expires_at=None), forget_key=True)

    async def _cas(self, session_id: str,
                   decide: Callable[[SessionRecord], Update | None]) -> SessionRecord:
        """Read, decide, compare-and-set; on a lost race read and decide again."""
        for _ in range(MAX_RACES):
            rec = await self.get_session(session_id)
            update = decide(rec)
            if update is None:
                return rec
            if await self.backend.apply(update):
                return update.session
        raise StorageUnavailable("the session is changing too fast; retry")

    async def _already_committed(self, rec: SessionRecord, batch: tuple[ChunkRecord, ...]) -> bool:
        """Return True if batch is committed exactly; raise ChunkCommitted on a different chunk."""
        old = [c for c in batch if c.index < rec.chunk_count]
        if not old:
            return False
        stored = await self.backend.list_chunks(rec.id, start=old[0].index, stop=rec.chunk_count,
                                                limit=len(old))
        by_index = {c.index: c for c in stored}
        for chunk in old:
            if by_index.get(chunk.index) != chunk:
                raise ChunkCommitted(f"chunk {chunk.index} is committed with other content",
                                     extra={"chunk_count": rec.chunk_count})
        return len(old) == len(batch)


def _timestamp(text: str) -> str:
    """Return text if it is an RFC 3339 UTC timestamp as `rfc3339` writes it (compared as text)."""
    try:
        ok = rfc3339(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)) == text
    except ValueError:
        ok = False
    if not ok:
        raise InvalidParameter("a time is YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC)")
    return text


def _limit(limit: int) -> int:
    if not 1 <= limit <= 1000:
        raise InvalidParameter("limit must satisfy 1 <= limit <= 1000")
    return limit


async def open_metastore(url: MetadataUrl, *, prepare: bool = True,
                         clock: Callable[[], datetime] = utc_now) -> MetadataStore:
    """Return the store on the backend url names, prepared (migrated) unless prepare=False."""
    backend: MetadataBackend
    if url.scheme == "sqlite":
        from sessions.storage.sqlite_backend import SqliteBackend
        backend = SqliteBackend(url.path)
    else:
        from sessions.storage.mongo_backend import MongoBackend
        backend = MongoBackend(url)
    store = MetadataStore(backend, clock=clock)
    if prepare:
        try:
            await store.prepare()
        except BaseException:
            await store.close()
            raise
    return store
