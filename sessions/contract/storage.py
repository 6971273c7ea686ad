"""Storage's internal API (`/internal/v1`) as the processor sees it: its shapes and its operations.

Storage answers with these models (`response_model` of every route) and validates
the request bodies with them; the processor's `StorageClient` builds its requests
with the `Operation` builders below and parses every answer with the reader each operation names,
so a field added here is documented by storage and read by the processor at once.
Binary fields travel as lowercase hex (hashes) or standard padded base64 (the
wrapped key blob).  Storage's records (`sessions/storage/records.py`) stay its own;
`sessions/storage/models.py` maps them to these shapes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Annotated
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sessions.common.checksums import Checksum
from sessions.common.evidence import AuditAppend, AuditHead, AuditPage
from sessions.common.ids import SESSION_ID_DOC
from sessions.common.models import (
    LABEL_KEY,
    MAX_CHUNK_INDEX,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    JsonInt,
    RetentionDays,
    UploadLengthInt,
)
from sessions.common.states import SessionState
from sessions.common.tokens import NewToken, StoredToken, StoredTokenList
from sessions.contract.models import Session
from sessions.contract.operations import (
    MalformedAnswer,
    Operation,
    nothing,
    raw_body,
    reads,
    unless_204,
)
from sessions.core import ChunkEntry, WrappedKey

__all__ = [
    "API", "MAX_LABELS", "AuditAppend", "AuditHead", "AuditPage", "NewToken", "StoredToken",
    "StoredTokenList", "ChunkList", "ChunkModel", "CheckpointIn", "CommitIn", "CommitOut",
    "CreateSessionIn", "DiscardOut", "FinalizeIn", "HoldIn", "KeyUsageOut", "LeaseIn",
    "LeaseOut", "LeaseRelease", "LeaseRenew", "MalformedAnswer",
    "PutChunkOut", "RewrapIn", "StatsOut", "StoredSession", "StoredSessionPage",
    "TransitionIn", "UploadLengthIn", "WrappedKeyModel",
]

API = "/internal/v1"
HEX32 = r"^[0-9a-fA-F]{64}$"
MAX_COMMIT_CHUNKS = 10_000
_LABEL_KEY = re.compile(rf"^{LABEL_KEY}\Z")


# -- shapes ----------------------------------------------------------------------------------

class WrappedKeyModel(BaseModel):
    """A session's wrapped data key on the wire: opaque to storage, opened by the processor."""

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

    def blob_bytes(self) -> bytes:
        """Return the decoded blob (validated as base64 on construction)."""
        return base64.b64decode(self.blob, validate=True)

    def to_core(self) -> WrappedKey:
        """Return the processor's `WrappedKey`; raise UnwrapError if it is not a well-formed one."""
        return WrappedKey.from_json({"key_id": self.key_id, "blob": self.blob})

    @classmethod
    def of(cls, key: WrappedKey) -> WrappedKeyModel:
        return cls(key_id=key.key_id, blob=base64.b64encode(key.blob).decode("ascii"))


class StoredSession(Session):
    """A session record as storage keeps it: the public `Session` plus its wrapped key.

    On the wire the key is `wrapped_key` (base64, null once erased); in Python the
    field is `stored_key` and `.wrapped_key` is the processor's parsed `WrappedKey`.
    """

    stored_key: WrappedKeyModel | None = Field(
        alias="wrapped_key", description="the data key wrapped by the processor; null once erased")

    @property
    def wrapped_key(self) -> WrappedKey | None:
        """Return the parsed wrapped key, None once erased; raise UnwrapError if malformed."""
        return None if self.stored_key is None else self.stored_key.to_core()

    def public(self) -> Session:
        """Return the session as clients see it, without the wrapped key."""
        return Session.model_validate({name: getattr(self, name) for name in Session.model_fields})


class StoredSessionPage(BaseModel):
    items: list[StoredSession]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class ChunkModel(BaseModel):
    """One committed chunk: the six facts a manifest entry holds (core's `ChunkEntry`)."""

    index: JsonInt = Field(ge=0, le=MAX_CHUNK_INDEX)
    offset: JsonInt = Field(ge=0)
    length: JsonInt = Field(ge=1)
    sealed_length: JsonInt = Field(ge=1)
    leaf_hash: str = Field(pattern=HEX32)
    compressed: bool = Field(strict=True)

    def to_entry(self) -> ChunkEntry:
        return ChunkEntry(index=self.index, offset=self.offset, length=self.length,
                          sealed_length=self.sealed_length,
                          leaf_hash=bytes.fromhex(self.leaf_hash), compressed=self.compressed)

    @classmethod
    def of(cls, entry: ChunkEntry) -> ChunkModel:
        return cls(index=entry.index, offset=entry.offset, length=entry.length,
                   sealed_length=entry.sealed_length, leaf_hash=entry.leaf_hash.hex(),
                   compressed=entry.compressed)


class ChunkList(BaseModel):
    items: list[ChunkModel]


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Return labels if they keep storage's rules (count, key pattern, value length)."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label keys match ^{LABEL_KEY}$")
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label values are at most {MAX_LABEL_VALUE} characters")
    return labels


class CreateSessionIn(BaseModel):
    """Body of `POST /sessions`: what the processor supplies (storage adds state, times...)."""

    id: str = Field(description="session id chosen by the processor (checked as an id)",
                    json_schema_extra=SESSION_ID_DOC)
    labels: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "maxProperties": MAX_LABELS, "propertyNames": {"pattern": f"^{LABEL_KEY}$"},
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
        return check_labels(value)


MAX_LEASE_TOKEN = (1 << 53) - 1  # a JSON-safe integer: tokens grow by one per acquire
LeaseToken = Annotated[int, Field(ge=1, le=MAX_LEASE_TOKEN, description=(
    "the fencing token of the writer's lease (`POST /sessions/{id}/lease`); refused with "
    "409 `lease_lost` once it is not the session's current one")), *JsonInt.__metadata__]
LEASE_TOKEN_HEADER = "X-Lucid-Lease-Token"  # noqa: S105 (a header name)


class TransitionIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    to: SessionState
    from_: list[SessionState] | None = Field(
        default=None, validation_alias="from", serialization_alias="from",
        description="compare-and-set: the states the session must be in")
    lease_token: LeaseToken | None = None


class CommitIn(BaseModel):
    expected_offset: JsonInt = Field(ge=0)
    chunks: list[ChunkModel] = Field(max_length=MAX_COMMIT_CHUNKS)
    lease_token: LeaseToken | None = None


class LeaseIn(BaseModel):
    """Body of `POST /sessions/{id}/lease`: take the session's writer lease for ttl seconds."""

    model_config = ConfigDict(extra="forbid")

    holder: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    ttl_seconds: float = Field(gt=0, le=3600)


class LeaseRenew(LeaseIn):
    """Body of `POST /sessions/{id}/lease/renew`: extend the lease the token names."""

    token: LeaseToken


class LeaseRelease(BaseModel):
    """Body of `POST /sessions/{id}/lease/release`: give up the lease the token names."""

    model_config = ConfigDict(extra="forbid")

    holder: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    token: LeaseToken


class LeaseOut(BaseModel):
    """A held writer lease: its fencing token (strictly increasing per session) and expiry."""

    holder: str
    token: int
    expires_at: str


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
    lease_token: LeaseToken | None = None


class CheckpointIn(BaseModel):
    """Body of `PUT /sessions/{id}/checkpoint`: the processor's last signed checkpoint."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(min_length=1, max_length=64 * 1024)
    lease_token: LeaseToken | None = None


class UploadLengthIn(BaseModel):
    """Body of `PUT /sessions/{id}/upload-length`: the total a deferred-length client declares."""

    model_config = ConfigDict(extra="forbid")

    upload_length: UploadLengthInt
    lease_token: LeaseToken | None = None


class StatsOut(BaseModel):
    sessions_by_state: dict[str, int]


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


# -- operations --------------------------------------------------------------------------------

def _body(model: BaseModel) -> object:
    return model.model_dump(mode="json", by_alias=True)


def _session(sid: str, tail: str = "") -> str:
    return f"{API}/sessions/{quote(sid, safe='')}{tail}"


def ready() -> Operation[None]:
    """Storage's readiness probe (outside `/internal/v1`, no body): 200 once it serves."""
    return Operation("GET", "/ready", nothing)


def create_session(body: CreateSessionIn) -> Operation[StoredSession]:
    return Operation("POST", f"{API}/sessions", reads(StoredSession), json=_body(body))


def get_session(sid: str) -> Operation[StoredSession]:
    return Operation("GET", _session(sid), reads(StoredSession))


def list_sessions(params: Sequence[tuple[str, str]]) -> Operation[StoredSessionPage]:
    """List one page; params are `state`, `label` (repeatable), `cursor` and `limit`."""
    return Operation("GET", f"{API}/sessions", reads(StoredSessionPage), params=tuple(params))


def replace_wrapped_key(sid: str, body: RewrapIn) -> Operation[StoredSession]:
    return Operation("PUT", _session(sid, "/wrapped-key"), reads(StoredSession), json=_body(body))


def set_upload_length(sid: str, length: int,
                      lease_token: int | None = None) -> Operation[StoredSession]:
    body = UploadLengthIn(upload_length=length, lease_token=lease_token)
    return Operation("PUT", _session(sid, "/upload-length"), reads(StoredSession),
                     json=_body(body))


def transition(sid: str, to: SessionState, allowed_from: Sequence[SessionState],
               lease_token: int | None = None) -> Operation[StoredSession]:
    body = TransitionIn(to=to, from_=list(allowed_from), lease_token=lease_token)
    return Operation("POST", _session(sid, "/state"), reads(StoredSession), json=_body(body))


def put_chunk(sid: str, index: int, *, length: int, leaf_hash: bytes,
              checksum: Checksum | None = None,
              lease_token: int | None = None) -> Operation[None]:
    """Stage a sealed chunk of `length` bytes; the caller's transport sends the body itself.

    With a `checksum`, storage checks the body against it instead of hashing it again
    for its leaf hash."""
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
               "X-Lucid-Leaf-Hash": leaf_hash.hex()}
    if checksum is not None:
        headers["Upload-Checksum"] = checksum.header
    if lease_token is not None:
        headers[LEASE_TOKEN_HEADER] = str(lease_token)
    return Operation("PUT", _session(sid, f"/chunks/{index}"), nothing, headers=headers)


def get_chunk(sid: str, index: int, *, start: int = 0) -> Operation[bytes]:
    """Read a committed chunk's sealed bytes: all of them, or from byte `start` > 0 on
    (`Range: bytes=start-`, a read resumed after it broke off; `chunk_span` reads the 206)."""
    headers = {"Range": f"bytes={start}-"} if start else {}
    return Operation("GET", _session(sid, f"/chunks/{index}"), raw_body, headers=headers)


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")


def chunk_span(status: int, headers: Mapping[str, str], *, start: int) -> int | None:
    """Return the sealed length a chunk GET's 2xx answer announces (None if it does not).

    A read from byte 0 is a 200 (its Content-Length, if sent, is the length); a read
    from `start` > 0 must be a 206 of `Content-Range: bytes start-(size-1)/size`
    (RFC 9110 §14.4), or it raises MalformedAnswer: bytes from anywhere else must never
    be spliced into the chunk.
    """
    if start == 0:
        if status != 200:
            raise MalformedAnswer(f"a chunk read answered {status}, not 200")
        length = headers.get("content-length", "")
        return int(length) if length.isdigit() else None
    m = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
    if status != 206 or m is None:
        raise MalformedAnswer(f"a resumed chunk read answered {status} without a Content-Range")
    first, last, size = (int(g) for g in m.groups())
    if first != start or last != size - 1:
        raise MalformedAnswer(f"a resumed chunk read from byte {start} answered "
                              f"bytes {first}-{last}/{size}")
    return size


def commit(sid: str, *, expected_offset: int, chunks: Sequence[ChunkEntry],
           lease_token: int | None = None) -> Operation[CommitOut]:
    body = CommitIn(expected_offset=expected_offset, chunks=[ChunkModel.of(c) for c in chunks],
                    lease_token=lease_token)
    return Operation("POST", _session(sid, "/commit"), reads(CommitOut), json=_body(body))


def discard_staged(sid: str, lease_token: int | None = None) -> Operation[DiscardOut]:
    params = () if lease_token is None else (("lease_token", str(lease_token)),)
    return Operation("DELETE", _session(sid, "/staged"), reads(DiscardOut), params=params)


def acquire_lease(sid: str, *, holder: str, ttl_seconds: float) -> Operation[LeaseOut]:
    body = LeaseIn(holder=holder, ttl_seconds=ttl_seconds)
    return Operation("POST", _session(sid, "/lease"), reads(LeaseOut), json=_body(body))


def renew_lease(sid: str, *, holder: str, token: int, ttl_seconds: float) -> Operation[LeaseOut]:
    body = LeaseRenew(holder=holder, token=token, ttl_seconds=ttl_seconds)
    return Operation("POST", _session(sid, "/lease/renew"), reads(LeaseOut), json=_body(body))


def release_lease(sid: str, *, holder: str, token: int) -> Operation[None]:
    body = LeaseRelease(holder=holder, token=token)
    return Operation("POST", _session(sid, "/lease/release"), nothing, json=_body(body))


def list_chunks(sid: str, *, start: int, limit: int) -> Operation[ChunkList]:
    return Operation("GET", _session(sid, "/chunks"), reads(ChunkList),
                     params=(("start", str(start)), ("limit", str(limit))))


def leaves(sid: str, *, size: int) -> Operation[bytes]:
    """The first `size` leaf hashes, 32 bytes each, as one binary body."""
    return Operation("GET", _session(sid, "/leaves"), raw_body, params=(("size", str(size)),))


def finalize(sid: str, *, root_hash: bytes, checkpoint: str, manifest: bytes,
             lease_token: int | None = None) -> Operation[StoredSession]:
    body = FinalizeIn(root_hash=root_hash.hex(), checkpoint=checkpoint,
                      manifest=manifest.decode("utf-8"), lease_token=lease_token)
    return Operation("POST", _session(sid, "/finalize"), reads(StoredSession), json=_body(body))


def get_manifest(sid: str) -> Operation[bytes]:
    return Operation("GET", _session(sid, "/manifest"), raw_body)


def put_checkpoint(sid: str, checkpoint: bytes,
                   lease_token: int | None = None) -> Operation[None]:
    body = CheckpointIn(checkpoint=checkpoint.decode("utf-8"), lease_token=lease_token)
    return Operation("PUT", _session(sid, "/checkpoint"), nothing, json=_body(body))


def get_checkpoint(sid: str) -> Operation[bytes | None]:
    return Operation("GET", _session(sid, "/checkpoint"), unless_204)


def delete_session(sid: str) -> Operation[None]:
    return Operation("DELETE", _session(sid), nothing)


def set_hold(sid: str, body: HoldIn) -> Operation[StoredSession]:
    return Operation("PUT", _session(sid, "/hold"), reads(StoredSession), json=_body(body))


def expired(*, before: str, limit: int) -> Operation[StoredSessionPage]:
    return Operation("GET", f"{API}/expired", reads(StoredSessionPage),
                     params=(("before", before), ("limit", str(limit))))


def idle(*, state: SessionState, before: str, limit: int) -> Operation[StoredSessionPage]:
    return Operation("GET", f"{API}/idle", reads(StoredSessionPage),
                     params=(("state", state.value), ("before", before), ("limit", str(limit))))


def key_usage() -> Operation[KeyUsageOut]:
    return Operation("GET", f"{API}/key-usage", reads(KeyUsageOut))


def stats() -> Operation[StatsOut]:
    return Operation("GET", f"{API}/stats", reads(StatsOut))


def create_token(body: NewToken) -> Operation[StoredToken]:
    return Operation("POST", f"{API}/tokens", reads(StoredToken), json=_body(body))


def list_tokens() -> Operation[StoredTokenList]:
    return Operation("GET", f"{API}/tokens", reads(StoredTokenList))


def get_token(token_id: str) -> Operation[StoredToken]:
    return Operation("GET", f"{API}/tokens/{quote(token_id, safe='')}", reads(StoredToken))


def revoke_token(token_id: str) -> Operation[StoredToken]:
    return Operation("POST", f"{API}/tokens/{quote(token_id, safe='')}/revoke", reads(StoredToken))


def audit_head() -> Operation[AuditHead]:
    return Operation("GET", f"{API}/audit/head", reads(AuditHead))


def append_audit(body: AuditAppend) -> Operation[None]:
    return Operation("POST", f"{API}/audit", nothing, json=_body(body))


def audit_page(params: Mapping[str, str]) -> Operation[AuditPage]:
    """One page of the audit log; params are `start`, `limit` and `session_id`."""
    return Operation("GET", f"{API}/audit", reads(AuditPage), params=tuple(params.items()))


def audit_checkpoint() -> Operation[bytes | None]:
    return Operation("GET", f"{API}/audit/checkpoint", unless_204)
