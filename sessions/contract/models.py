"""The shapes that cross a process boundary, defined once.

Every hop builds and parses these same models: storage answers the processor with
them, the processor answers the gateway, the gateway answers clients, and the CLI
parses them. A field added here reaches every hop, and `mypy --strict` names each
place that must fill it in (tests/contract/test_contract_add_a_field.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sessions.common.evidence import AuditEntryModel as AuditEntryModel
from sessions.common.evidence import AuditPage as AuditPage
from sessions.common.evidence import KeyPeriodModel as KeyPeriodModel
from sessions.common.evidence import RotateSigningIn as RotateSigningIn
from sessions.common.models import CreateSession as CreateSession
from sessions.common.models import OwnedCreateSession as OwnedCreateSession
from sessions.common.models import PrefixCheck as PrefixCheck
from sessions.common.models import UploadLength as UploadLength
from sessions.common.states import SessionState
from sessions.common.tokens import CreatedToken as CreatedToken
from sessions.common.tokens import CreateToken as CreateToken
from sessions.common.tokens import NewToken as NewToken
from sessions.common.tokens import StoredToken as StoredToken
from sessions.common.tokens import StoredTokenList as StoredTokenList
from sessions.common.tokens import TokenInfo as TokenInfo
from sessions.common.tokens import TokenList as TokenList

# Shapes defined beside the rules they carry (request bodies with their validators, the audit
# log's entries, tokens) are re-exported above: this module names every shape that crosses a
# process boundary, so a hop imports them all from one place.


class ErrorBody(BaseModel):
    """Every 4xx/5xx body of every service: a stable code, a human detail, sometimes more fields.

    Rendered from a `ServiceError` (sessions/common/errors.py); read by every client with
    `operations.decode_error`, which needs no pydantic (tests/contract/test_error_body.py
    holds the two alike).  Extra fields are per code: `offset` on 409 `offset_mismatch`,
    `size` on 416, `state` on 409 `invalid_state`, `index` and `reason` on 502
    `chunk_corrupt`.
    """

    model_config = ConfigDict(extra="allow")
    error: str = Field(examples=["offset_mismatch"], description="stable machine-readable code")
    detail: str = Field(description="human-readable; never exception text or secrets")


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
    integrity: Literal["ok", "mismatch", "unchecked"] = Field(
        "unchecked", description="`ok`: the stored record agrees with what the node signed "
        "(completed: the manifest, whose root and sizes are the ones shown; recording: the "
        "last signed checkpoint's chunk count and sizes); `mismatch`: it does not, run verify; "
        "`unchecked`: not checked (lists, deleted sessions)")
    upload_length: int | None = Field(None, description="declared total bytes (tus "
                                      "Upload-Length); the session is finalized when its "
                                      "offset reaches it; null: not declared")
    owner: str | None = Field(None, description="id of the API token that created it "
                              "(`bootstrap-admin`: the admin token file); null: not recorded")
    legal_hold: bool = Field(False, description="under legal hold: neither DELETE (409 "
                             "`legal_hold`) nor the retention sweep erases it")
    expires_at: str | None = Field(None, description="RFC 3339: when the retention sweep "
                                   "erases it (created_at + retention_days); null: never")


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


class PrefixCheckResult(BaseModel):
    """Whether the session's committed plaintext is exactly the prefix the client hashed."""

    match: bool
    offset: int = Field(description="the committed offset the check covered")


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


class MetadataFinding(BaseModel):
    """A stored record or chunk row that disagrees with what the node signed."""

    what: str = Field(description="the field: root_hash, chunk_count, offset, sealed_bytes, "
                      "labels, created_at, chunk_size, zstd_level, format_version, state, "
                      "manifest, checkpoint, or a chunk row's leaf_hash, offset, length, "
                      "sealed_length, compressed, chunk_row")
    index: int | None = Field(description="the chunk row's index; null for the session record")
    detail: str = ""


class VerifyReport(BaseModel):
    session_id: str
    chunk_count: int = Field(description="signed chunk count (the manifest's once completed)")
    checked: int
    sampled: bool
    ok: bool = Field(description="no bad chunk, no metadata finding, root and signature not false")
    root_ok: bool | None = Field(description="the chunks' bytes rebuild the signed root; null "
                                 "when only a sample was checked")
    signature_ok: bool | None = Field(description="the manifest (or, while recording, the last "
                                      "signed checkpoint) verifies; null when there is none")
    bad_chunks: list[BadChunk] = Field(description="chunk files that are missing, altered "
                                       "or do not open")
    metadata_findings: list[MetadataFinding] = Field(
        default_factory=list, description="metadata damage: records and chunk rows that "
        "disagree with what was signed, apart from the chunks themselves")


class NodeInfo(BaseModel):
    key_name: str
    verifier_key: str = Field(description="C2SP signed-note verifier key of this node")
    origin_prefix: str = Field(description="checkpoint origins are `<origin_prefix><id>`")
    audit_origin: str | None = Field(None, description="origin of the audit log's signed head")
    key_history: list[KeyPeriodModel] = Field(
        default_factory=list, description="every signing key the node used, oldest first, "
        "the current one last: a verifier picks the one a signature line names")
    chunk_size: int | None = Field(None, description="plaintext bytes per chunk of new "
                                   "sessions: send multiples of it per upload request")


class KeyRotation(BaseModel):
    """What rewrapping every session key under the current master key did, by count."""

    master_key_id: str = Field(description="the master key every rewrapped key is under now")
    rotated: int = Field(description="keys rewrapped now")
    already_current: int = Field(description="keys already under the current master key")
    erased: int = Field(description="sessions whose key was erased (deleted)")
    period_wrapped: int = Field(description="keys under a retention period's key, not a "
                                "master key: left as they are")
    unknown_key_ids: list[str] = Field(description="master key ids the processor does not "
                                       "hold: add them to LUCID_PREVIOUS_MASTER_KEY_FILES")
    unreadable_session_ids: list[str] = Field(description="sessions whose wrapped key is "
                                              "malformed or does not open: left as they are")
