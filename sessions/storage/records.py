"""The plain records storage keeps, and the one rule for appending chunks to a session.

The rules layer (`metastore.MetadataStore`) and both backends (SQLite, MongoDB)
speak these dataclasses; only the rules layer calls `check_commit`, so the
backends cannot disagree on what a valid commit is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sessions.common.errors import (
    BadRequest,
    Conflict,
    LeaseLost,
    OffsetMismatch,
    PayloadTooLarge,
)
from sessions.common.states import SessionState, require_state
from sessions.core import ChunkEntry

LEAF_HASH_SIZE = 32
MAX_CHUNK_INDEX = 9_999_999_999  # chunk file names hold the index in 10 digits


@dataclass(frozen=True)
class WrappedKey:
    """A per-session data key wrapped by the processor's master key; opaque to storage."""

    key_id: str
    blob: bytes


@dataclass(frozen=True)
class NewSession:
    """What the processor supplies to create a session; storage adds state, times and counters."""

    id: str
    wrapped_key: WrappedKey
    chunk_size: int
    zstd_level: int
    format_version: int
    labels: dict[str, str] = field(default_factory=dict)
    retention_days: int | None = None
    upload_length: int | None = None
    owner: str | None = None
    """The id of the API token that created the session (a recorder acts on its own only)."""


@dataclass(frozen=True)
class SessionRecord:
    """One session's metadata as stored; `offset` counts committed plaintext bytes.

    `revision` counts the record's writes: every compare-and-set names the
    revision it read, so two writers can never both win from the same state.
    """

    id: str
    state: SessionState
    labels: dict[str, str]
    created_at: str
    updated_at: str
    retention_days: int | None
    offset: int
    chunk_count: int
    sealed_bytes: int
    chunk_size: int
    zstd_level: int
    format_version: int
    root_hash: bytes | None
    wrapped_key: WrappedKey | None
    upload_length: int | None = None
    """The total plaintext length the client declared (tus `Upload-Length`); None: not yet."""
    revision: int = 0
    owner: str | None = None
    """The id of the API token that created the session; None before owners were recorded."""
    legal_hold: bool = False
    """Set by an admin: the session may not be deleted (by DELETE or the retention sweep)."""
    expires_at: str | None = None
    """created_at + retention_days (RFC 3339 UTC); None: kept until deleted, or erased."""
    lease_token: int = 0
    """The fencing token of the session's latest writer lease: grows by one per acquire,
    never reused (0: never leased)."""
    lease_holder: str | None = None
    """Who holds the lease (a processor's random id); None: released or never taken."""
    lease_expires: str | None = None
    """When the held lease lapses (RFC 3339 UTC); another holder may take it over then."""


@dataclass(frozen=True)
class TokenRecord:
    """One API token as stored: its id, role and the SHA-256 of its secret, never the secret.

    Times are RFC 3339 UTC; `expires_at` None never expires, `revoked_at` None is live.
    """

    id: str
    name: str
    role: str
    secret_hash: bytes
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class Finalized:
    """What finalize stores beside the root hash: the signed checkpoint and the manifest."""

    checkpoint: str
    manifest: bytes


@dataclass(frozen=True)
class Update:
    """One compare-and-set: the record as it must be afterwards, and what is written with it.

    A backend applies it only if the stored revision is still `session.revision - 1`,
    and then inserts `chunks` and stores `finalized` (or the processor's last signed
    `checkpoint`) in the same atomic step.
    `forget_key` says an old wrapped key was dropped or replaced, so a backend that
    can (SQLite's WAL) should not keep an old copy of it.
    """

    session: SessionRecord
    chunks: tuple[ChunkRecord, ...] = ()
    finalized: Finalized | None = None
    checkpoint: str | None = None
    forget_key: bool = False


ChunkRecord = ChunkEntry
"""One committed chunk: where its plaintext sits and the RFC 9162 leaf hash of its bytes
(the same six facts a manifest entry holds, so one type serves both)."""


def check_commit(rec: SessionRecord, *, expected_offset: int,
                 chunks: Sequence[ChunkRecord]) -> None:
    """Check that chunks may be appended to rec; raise the error a commit must fail with.

    Preconditions: rec.state == recording; expected_offset == rec.offset;
    rec.offset + sum(lengths) <= rec.upload_length when that is declared;
    chunks[i].index == rec.chunk_count + i; chunks[0].offset == rec.offset and
    chunks[i+1].offset == chunks[i].offset + chunks[i].length; length, sealed_length >= 1;
    len(leaf_hash) == 32.
    """
    require_state(rec.state, SessionState.RECORDING, action="commit chunks to")
    if expected_offset != rec.offset:
        raise OffsetMismatch(f"the committed offset is {rec.offset}",
                             extra={"offset": rec.offset})
    index, offset = rec.chunk_count, rec.offset
    for chunk in chunks:
        if chunk.index != index or chunk.offset != offset:
            raise Conflict(f"chunks must be contiguous: expected index {index} at offset {offset}",
                           extra={"chunk_count": rec.chunk_count, "offset": rec.offset})
        if chunk.length < 1 or chunk.sealed_length < 1 or len(chunk.leaf_hash) != LEAF_HASH_SIZE:
            raise BadRequest(f"chunk {index} needs positive lengths and a 32-byte leaf hash")
        if index > MAX_CHUNK_INDEX:
            raise BadRequest("a session holds at most 10^10 chunks")
        index, offset = index + 1, offset + chunk.length
    if rec.upload_length is not None and offset > rec.upload_length:
        raise PayloadTooLarge(f"the session's declared length is {rec.upload_length} bytes",
                              extra={"offset": rec.offset, "upload_length": rec.upload_length})


def check_upload_length(rec: SessionRecord, length: int) -> bool:
    """Check that rec may take `length` as its declared total; return whether it is new.

    Preconditions: state == recording; length >= rec.offset; a length once declared
    never changes (declaring the same one again is a no-op: returns False).
    """
    if rec.upload_length is not None:
        if rec.upload_length != length:
            raise Conflict(f"the session's length is already {rec.upload_length} bytes",
                           extra={"upload_length": rec.upload_length})
        return False
    require_state(rec.state, SessionState.RECORDING, action="declare the length of")
    if length < rec.offset:
        raise Conflict(f"{rec.offset} bytes are already committed",
                       extra={"offset": rec.offset})
    return True


def check_lease(rec: SessionRecord, token: int | None) -> None:
    """Check that a write fenced with `token` may go to rec; raise LeaseLost (409) if not.

    With a token: it is rec's current lease token and the lease is held (not released).
    An expired lease nobody took over still fences correctly (no newer token exists).
    Without a token (a writer that takes no lease): only while no lease is held.
    """
    if token is None:
        if rec.lease_holder is not None:
            raise LeaseLost("the session is leased to a writer; send its fencing token",
                            extra={"lease_token": rec.lease_token})
        return
    if token != rec.lease_token or rec.lease_holder is None:
        raise LeaseLost(extra={"lease_token": rec.lease_token})
