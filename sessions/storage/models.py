"""Storage's side of its internal API: its records mapped to the contract's shapes, and back.

The shapes themselves (`StoredSession`, `ChunkModel`, the request bodies ...) live in
`sessions/contract/storage.py`, which the processor parses with; this module builds
them from storage's records in one place each, and keeps storage's own query rules.
"""

from __future__ import annotations

import base64

from sessions.common.errors import InvalidParameter
from sessions.contract.storage import (
    MAX_LABELS,
    ChunkModel,
    CreateSessionIn,
    StoredSession,
    StoredSessionPage,
    WrappedKeyModel,
)
from sessions.storage.records import ChunkRecord, NewSession, SessionRecord, WrappedKey


def wrapped_key(model: WrappedKeyModel) -> WrappedKey:
    """Return the record of a wrapped key sent by the processor."""
    return WrappedKey(key_id=model.key_id, blob=model.blob_bytes())


def wrapped_key_model(key: WrappedKey) -> WrappedKeyModel:
    return WrappedKeyModel(key_id=key.key_id, blob=base64.b64encode(key.blob).decode("ascii"))


def new_session(body: CreateSessionIn) -> NewSession:
    """Return what storage records for a create request."""
    return NewSession(id=body.id, labels=dict(body.labels), retention_days=body.retention_days,
                      wrapped_key=wrapped_key(body.wrapped_key), chunk_size=body.chunk_size,
                      zstd_level=body.zstd_level, format_version=body.format_version,
                      upload_length=body.upload_length, owner=body.owner)


def stored_session(rec: SessionRecord) -> StoredSession:
    """Return the session record as storage answers it (the one builder of `StoredSession`)."""
    return StoredSession(
        id=rec.id, state=rec.state, labels=rec.labels, created_at=rec.created_at,
        updated_at=rec.updated_at, retention_days=rec.retention_days, offset=rec.offset,
        chunk_count=rec.chunk_count, sealed_bytes=rec.sealed_bytes,
        chunk_size=rec.chunk_size, zstd_level=rec.zstd_level,
        format_version=rec.format_version,
        root_hash=None if rec.root_hash is None else rec.root_hash.hex(),
        wrapped_key=None if rec.wrapped_key is None else wrapped_key_model(rec.wrapped_key),
        upload_length=rec.upload_length, owner=rec.owner, legal_hold=rec.legal_hold,
        expires_at=rec.expires_at, integrity="unchecked")


def session_page(records: list[SessionRecord], next_cursor: str | None) -> StoredSessionPage:
    return StoredSessionPage(items=[stored_session(r) for r in records], next_cursor=next_cursor)


def chunk_records(chunks: list[ChunkModel]) -> list[ChunkRecord]:
    return [c.to_entry() for c in chunks]


def parse_label_filters(raw: list[str]) -> list[tuple[str, str]]:
    """Return (key, value) pairs from repeated `label=key:value` query parameters."""
    if len(raw) > MAX_LABELS:
        raise InvalidParameter(f"at most {MAX_LABELS} label filters")
    pairs = []
    for item in raw:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise InvalidParameter("a label filter is key:value")
        pairs.append((key, value))
    return pairs
