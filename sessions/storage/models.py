"""The JSON shapes of the storage internal API (docs/architecture.md), and their mapping to records.

Binary fields travel as lowercase hex (hashes) or standard padded base64 (the
wrapped key blob); records keep them as bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sessions.common.errors import InvalidParameter
from sessions.common.ids import SESSION_ID_DOC
from sessions.common.models import JsonInt, RetentionDays, UploadLengthInt
from sessions.common.states import SessionState
from sessions.storage.records import (
    MAX_CHUNK_INDEX,
    ChunkRecord,
    NewSession,
    SessionRecord,
    WrappedKey,
)

HEX32 = r"^[0-9a-fA-F]{64}$"
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
_LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")


class WrappedKeyModel(BaseModel):
    key_id: str = Field(min_length=1, max_length=256)
    blob: str = Field(min_length=1, max_length=8192, description="standard base64",
                      pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")

    @field_validator("blob")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be standard base64") from None
        return value

    def to_record(self) -> WrappedKey:
        return WrappedKey(key_id=self.key_id, blob=base64.b64decode(self.blob, validate=True))

    @classmethod
    def of(cls, key: WrappedKey) -> WrappedKeyModel:
        return cls(key_id=key.key_id, blob=base64.b64encode(key.blob).decode("ascii"))


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError("label keys match ^[a-z0-9][a-z0-9_.-]{0,63}$")
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label values are at most {MAX_LABEL_VALUE} characters")
    return labels


class CreateSessionIn(BaseModel):
    id: str = Field(description="session id chosen by the processor (checked as an id)",
                    json_schema_extra=SESSION_ID_DOC)
    labels: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "maxProperties": MAX_LABELS, "propertyNames": {"pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"},
        "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE}})
    retention_days: RetentionDays | None = None
    wrapped_key: WrappedKeyModel
    chunk_size: JsonInt = Field(ge=1, le=1 << 30)
    zstd_level: JsonInt = Field(ge=-(1 << 17), le=22)
    format_version: JsonInt = Field(ge=1, le=255)
    upload_length: UploadLengthInt | None = Field(None, description="declared total plaintext "
                                          "bytes (tus Upload-Length); null: not known yet")
    owner: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9-]+$",
                              description="id of the API token that creates the session")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    def to_new(self) -> NewSession:
        return NewSession(id=self.id, labels=dict(self.labels),
                          retention_days=self.retention_days,
                          wrapped_key=self.wrapped_key.to_record(), chunk_size=self.chunk_size,
                          zstd_level=self.zstd_level, format_version=self.format_version,
                          upload_length=self.upload_length, owner=self.owner)


class SessionOut(BaseModel):
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
    root_hash: str | None
    wrapped_key: WrappedKeyModel | None
    upload_length: int | None
    owner: str | None = None
    legal_hold: bool = False
    expires_at: str | None = None

    @classmethod
    def of(cls, rec: SessionRecord) -> SessionOut:
        return cls(
            id=rec.id, state=rec.state, labels=rec.labels, created_at=rec.created_at,
            updated_at=rec.updated_at, retention_days=rec.retention_days, offset=rec.offset,
            chunk_count=rec.chunk_count, sealed_bytes=rec.sealed_bytes,
            chunk_size=rec.chunk_size, zstd_level=rec.zstd_level,
            format_version=rec.format_version,
            root_hash=None if rec.root_hash is None else rec.root_hash.hex(),
            wrapped_key=None if rec.wrapped_key is None else WrappedKeyModel.of(rec.wrapped_key),
            upload_length=rec.upload_length, owner=rec.owner, legal_hold=rec.legal_hold,
            expires_at=rec.expires_at)


class SessionList(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class ChunkModel(BaseModel):
    index: JsonInt = Field(ge=0, le=MAX_CHUNK_INDEX)
    offset: JsonInt = Field(ge=0)
    length: JsonInt = Field(ge=1)
    sealed_length: JsonInt = Field(ge=1)
    leaf_hash: str = Field(pattern=HEX32)
    compressed: bool = Field(strict=True)

    def to_record(self) -> ChunkRecord:
        return ChunkRecord(index=self.index, offset=self.offset, length=self.length,
                           sealed_length=self.sealed_length,
                           leaf_hash=bytes.fromhex(self.leaf_hash), compressed=self.compressed)

    @classmethod
    def of(cls, rec: ChunkRecord) -> ChunkModel:
        return cls(index=rec.index, offset=rec.offset, length=rec.length,
                   sealed_length=rec.sealed_length, leaf_hash=rec.leaf_hash.hex(),
                   compressed=rec.compressed)


class ChunkList(BaseModel):
    items: list[ChunkModel]


class TransitionIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    to: SessionState
    from_: list[SessionState] | None = Field(
        None, alias="from", description="compare-and-set: the states the session must be in")


class CommitIn(BaseModel):
    expected_offset: JsonInt = Field(ge=0)
    chunks: list[ChunkModel] = Field(max_length=10_000)


class CommitOut(BaseModel):
    offset: int
    chunk_count: int


class PutChunkOut(BaseModel):
    index: int
    sealed_length: int


class DiscardOut(BaseModel):
    """The indexes of the staged, uncommitted chunk files a discard removed."""

    discarded: list[int]


class FinalizeIn(BaseModel):
    root_hash: str = Field(pattern=HEX32)
    checkpoint: str = Field(min_length=1, max_length=64 * 1024)
    manifest: str = Field(min_length=1, max_length=64 * 1024 * 1024)


class CheckpointIn(BaseModel):
    """Body of `PUT /sessions/{id}/checkpoint`: the processor's last signed checkpoint."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(min_length=1, max_length=64 * 1024)


class UploadLengthIn(BaseModel):
    """Body of `PUT /sessions/{id}/upload-length`: the total a deferred-length client declares."""

    model_config = ConfigDict(extra="forbid")

    upload_length: UploadLengthInt


class StatsOut(BaseModel):
    sessions_by_state: dict[str, int]


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


class RewrapIn(BaseModel):
    """Body of `PUT /sessions/{id}/wrapped-key`: the key rewrapped under a new master key."""

    model_config = ConfigDict(extra="forbid")

    expected_key_id: str = Field(min_length=1, max_length=256)
    wrapped_key: WrappedKeyModel


class HoldIn(BaseModel):
    """Body of `PUT /sessions/{id}/hold`: set or release the hold, with the key rewrapped for it."""

    model_config = ConfigDict(extra="forbid")

    legal_hold: bool = Field(strict=True)
    expected_key_id: str = Field(min_length=1, max_length=256)
    wrapped_key: WrappedKeyModel


class KeyUsageOut(BaseModel):
    """How many sessions hold a wrapped key under each key id (erased sessions hold none)."""

    key_ids: dict[str, int]
