"""Evidence on the wire: the audit log and the signing-key history, one model per shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field, StringConstraints

if TYPE_CHECKING:  # the gateway holds no keys: it serves these shapes without sessions.core
    from sessions.core import AuditEntry

_MAX_SEQ = (1 << 53) - 1  # exact in every JSON parser (RFC 8259 §6), so fuzzers agree on it

MAX_AUDIT_PAGE = 1000
_Text = Annotated[str, StringConstraints(max_length=256)]
_Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class AuditEntryModel(BaseModel):
    """One audit entry as stored and served (`sessions.core.AuditEntry.to_json`)."""

    seq: int = Field(ge=0, le=_MAX_SEQ, description="0, 1, 2, ... in the order of actions")
    at: _Text = Field(description="RFC 3339 UTC time the processor recorded the action")
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")] = Field(
        description="create, append, finalize, replay, verify, delete, hold, release, "
        "expire, idle_finalize (the retention sweep, actor `sweeper`), "
        "rotate_keys or rotate_signing_key")
    actor: _Text = Field(description="the token id that acted (never the token)")
    client: _Text = Field(description="the client address the gateway saw")
    session: _Text | None = Field(description="the id of the session acted on, if any")
    detail: _Text = Field(description="a short summary, e.g. the bytes appended")
    prev: _Hex32 = Field(description="hex hash of the previous entry (64 zeros for entry 0)")

    def to_core(self) -> AuditEntry:
        """Return the core entry (AuditError if a field breaks a core rule)."""
        from sessions.core import AuditEntry  # here, not at the top: the gateway never needs it
        return AuditEntry.from_json(self.model_dump())

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryModel:
        return cls.model_validate(entry.to_json())


class AuditPage(BaseModel):
    """One page of entries by sequence number; `next_start` continues, None at the end."""

    items: list[AuditEntryModel]
    next_start: int | None = None


class AuditAppend(BaseModel):
    """An entry to append and the processor's signed checkpoint of the log ending with it."""

    entry: AuditEntryModel
    checkpoint: Annotated[str, StringConstraints(max_length=65536)]


class AuditHead(BaseModel):
    """How many entries are stored, and the hash of the last (64 zeros if none)."""

    size: int = Field(ge=0)
    head: _Hex32


class KeyPeriodModel(BaseModel):
    """One signing key of the node and when it signed (`sessions.core.KeyPeriod`)."""

    verifier_key: str = Field(description="C2SP signed-note verifier key")
    not_before: str | None = Field(None, description="RFC 3339: first used (None: from the "
                                   "start)")
    not_after: str | None = Field(None, description="RFC 3339: retired (None: current)")
    compromised_after: str | None = Field(None, description="RFC 3339: the key is known to "
                                          "have leaked after this time; a checkpoint it "
                                          "signed is trusted only if obtained before it")


class RotateSigningIn(BaseModel):
    """Optionally mark the retiring signing key as compromised after a time."""

    compromised_after: str | None = Field(
        None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$",
        description="RFC 3339 UTC time after which the retiring key must not be trusted")
