"""Request models and query validation shared by the gateway and the processor.

Both check the same rules: the gateway to answer clients early, the processor
because it trusts no caller's validation.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sessions.common.errors import InvalidParameter
from sessions.common.ids import check_session_id
from sessions.common.states import SessionState

LABEL_KEY = r"[a-z0-9][a-z0-9_.-]{0,63}"
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_PAGE = 500
# Control (C0, DEL, C1) and format characters (bidi overrides, zero-width): never in a label.
_CONTROL = frozenset({"Cc", "Cf"})


class UploadLength(BaseModel):
    """Body of `PUT .../upload-length`: a length declared once, after creation."""

    model_config = ConfigDict(extra="forbid")

    upload_length: int = Field(ge=0)


class CreateSession(BaseModel):
    """Body of `POST /sessions`."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS,
                                   description="free-form labels: user, host, protocol ...")
    retention_days: int | None = Field(None, ge=1, le=36500,
                                       description="keep the recording this many days")
    upload_length: int | None = Field(None, ge=0, description="total bytes the recording "
                                      "will have, if known (tus Upload-Length): the session "
                                      "is finalized when its offset reaches it")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not re.fullmatch(LABEL_KEY, key):
                raise ValueError(f"label key {key[:64]!r} must match {LABEL_KEY}")
            if len(value) > MAX_LABEL_VALUE or any(unicodedata.category(c) in _CONTROL
                                                   for c in value):
                raise ValueError(f"label {key!r}: value must be at most {MAX_LABEL_VALUE} "
                                 "characters, none of them control or format characters")
        return labels


def list_params(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return validated list-query parameters (state, label=key:value, cursor, limit)."""
    out: list[tuple[str, str]] = []
    for name, value in items:
        if name == "state":
            if value not in {s.value for s in SessionState}:
                names = ", ".join(s.value for s in SessionState)
                raise InvalidParameter(f"state must be one of {names}")
        elif name == "label":
            key, sep, val = value.partition(":")
            if not sep or not re.fullmatch(LABEL_KEY, key) or len(val) > MAX_LABEL_VALUE:
                raise InvalidParameter("label filters look like label=key:value")
        elif name == "cursor":
            check_session_id(value)
        elif name == "limit":
            if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= MAX_PAGE:
                raise InvalidParameter(f"limit must be an integer in 1..{MAX_PAGE}")
        else:
            raise InvalidParameter(f"unknown query parameter {name[:32]!r}")
        out.append((name, value))
    return out


SHA256_BASE64 = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
"""Standard padded base64 of a 32-byte digest, in its one canonical spelling."""


class PrefixCheck(BaseModel):
    """Body of `POST /sessions/{id}/upload/prefix-check`: the digest of a local file's prefix."""

    model_config = ConfigDict(extra="forbid", strict=True)

    offset: int = Field(ge=0, description="length of the prefix; must equal the committed "
                        "offset")
    sha256: str = Field(pattern=SHA256_BASE64,
                        description="standard base64 of the SHA-256 of the first `offset` bytes")

    def digest(self) -> bytes:
        """Return the 32 digest bytes (the pattern admits nothing else)."""
        return base64.b64decode(self.sha256, validate=True)


class PrefixCheckResult(BaseModel):
    """Whether the session's committed plaintext is exactly the prefix the client hashed."""

    match: bool
    offset: int = Field(description="the committed offset the check covered")
