"""Pydantic models at the gateway's edges: request bodies, responses, error bodies.

`CreateSession` and the label rules are shared with the processor
(`sessions.common.models`).  Response models filter what the processor returns
down to the public contract (docs/architecture.md, "Public API"), so an internal
field such as a wrapped key can never leak.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from sessions.common.errors import ErrorBody as ErrorBody
from sessions.common.errors import error_responses
from sessions.common.ids import is_session_id
from sessions.common.models import CreateSession as CreateSession
from sessions.common.models import LabelFilter as _LabelFilter
from sessions.common.states import SessionState

LabelFilter = _LabelFilter
"""A list filter `key:value`: the session has label key with exactly that value."""


def _session_id(value: str) -> str:
    if not is_session_id(value):
        raise ValueError("must be a session id (26 characters of Crockford base32)")
    return value


SessionIdText = Annotated[str, AfterValidator(_session_id)]


class Session(BaseModel):
    """A session as clients see it (never its wrapped key)."""

    id: str
    state: SessionState
    labels: dict[str, str]
    created_at: str = Field(description="RFC 3339")
    updated_at: str = Field(description="RFC 3339")
    retention_days: int | None
    offset: int = Field(description="committed plaintext bytes")
    chunk_count: int
    sealed_bytes: int
    chunk_size: int = Field(description="plaintext bytes per chunk")
    zstd_level: int
    format_version: int
    root_hash: str | None = Field(description="hex Merkle root, set at finalize")


class SessionPage(BaseModel):
    items: list[Session]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class UploadStatus(BaseModel):
    offset: int = Field(description="committed plaintext bytes; the next PATCH starts here")
    chunk_count: int
    chunk_size: int = Field(description="send multiples of this many bytes per request")
    state: SessionState


class UploadResult(BaseModel):
    offset: int
    chunk_count: int


class InclusionProof(BaseModel):
    index: int
    size: int
    leaf_hash: str
    root_hash: str
    proof: list[str] = Field(description="hex node hashes, leaf to root (RFC 9162 §2.1.3)")


class ConsistencyProof(BaseModel):
    from_size: int
    to_size: int
    from_root: str
    to_root: str
    proof: list[str] = Field(description="hex node hashes (RFC 9162 §2.1.4)")


class BadChunk(BaseModel):
    index: int
    reason: Literal["missing", "altered", "unopenable"]


class VerifyReport(BaseModel):
    session_id: str
    chunk_count: int
    checked: int
    sampled: bool
    ok: bool
    root_ok: bool | None = Field(description="null when only a sample was checked")
    signature_ok: bool | None = Field(description="null when there is no signed manifest yet")
    bad_chunks: list[BadChunk]


class NodeInfo(BaseModel):
    key_name: str
    verifier_key: str = Field(description="C2SP signed-note verifier key of this node")
    origin_prefix: str = Field(description="checkpoint origins are `<origin_prefix><id>`")


errors = error_responses
