"""Request models and query validation shared by the gateway and the processor.

Both check the same rules: the gateway to answer clients early, the processor
because it trusts no caller's validation.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from sessions.common.errors import InvalidParameter
from sessions.common.ids import check_session_id
from sessions.common.states import SessionState

LABEL_KEY = r"[a-z0-9][a-z0-9_.-]{0,63}"
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_PAGE = 500
MAX_CHUNK_INDEX = 9_999_999_999
"""The largest chunk index any service accepts (storage names chunk files with 10 digits).

Every integer query or path parameter counting chunks (index, size, from, to, start)
is bounded by it, so no out-of-range number reaches SQLite (an OverflowError, a 500)."""
MAX_TREE_SIZE = MAX_CHUNK_INDEX + 1
MAX_UPLOAD_LENGTH = (1 << 53) - 1
"""The largest declared `upload_length` (8 PiB): an int64 column holds it (a larger one is
422, never an OverflowError's 500), and every integer above it is above it as a double
too, as JSON tools (schemathesis, JavaScript) compare it."""
LABEL_FILTER_PATTERN = "^" + LABEL_KEY + r":[\s\S]{0," + str(MAX_LABEL_VALUE) + "}$"
"""A list filter `key:value` (any value of at most MAX_LABEL_VALUE characters)."""
LabelFilter = Annotated[str, StringConstraints(pattern=LABEL_FILTER_PATTERN)]
RANGE_DOC = (  # the replay's Range, parsed by sessions/common/ranges.py
    "one byte range `bytes=first-last`, `bytes=first-` or `bytes=-suffix` (206); "
    "an invalid Range, another unit or several ranges are ignored (200, the whole "
    "stream); a single range past the end is 416 (RFC 9110 §14.2)")


def _json_integer(value: object) -> object:
    """Pass a JSON number on to int validation; refuse what pydantic's lax mode would coerce.

    Lax mode takes `true` and `"12"` as integers, which the OpenAPI document (type
    integer) says are invalid; 12.0 and 1e19 stay valid, as JSON Schema counts them
    integers (pydantic alone refuses a float past 2^63 as "too large").
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
"""An int field of a request body: a JSON integer, never a boolean or a string."""
RetentionDays = Annotated[int, Field(ge=1, le=36500), BeforeValidator(_json_integer)]
UploadLengthInt = Annotated[int, Field(ge=0, le=MAX_UPLOAD_LENGTH), BeforeValidator(_json_integer)]
"""A declared total length (tus Upload-Length); the bounds stay in the schema when optional."""

# Control (C0, DEL, C1) and format characters (bidi overrides, zero-width): never in a label.
_CONTROL = frozenset({"Cc", "Cf"})
# The characters `_CONTROL` names (Unicode 14, Python 3.11), as a regex class for the OpenAPI
# document; tests/e2e/test_openapi_contract.py checks the two agree on every code point.
_CONTROL_CLASS = (
    r"\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2"
    r"\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    r"\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    r"\U000e0001\U000e0020-\U000e007f")
LABEL_VALUE_DOC: dict[str, Any] = {"type": "string", "maxLength": MAX_LABEL_VALUE,
                                   "pattern": "^[^" + _CONTROL_CLASS + "]*$"}
LABELS_DOC: dict[str, Any] = {
    "maxProperties": MAX_LABELS, "propertyNames": {"pattern": "^" + LABEL_KEY + "$"},
    "additionalProperties": LABEL_VALUE_DOC}


class UploadLength(BaseModel):
    """Body of `PUT .../upload-length`: a length declared once, after creation."""

    model_config = ConfigDict(extra="forbid")

    upload_length: UploadLengthInt


class CreateSession(BaseModel):
    """Body of `POST /sessions`."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS,
                                   description="free-form labels: user, host, protocol ...",
                                   json_schema_extra=LABELS_DOC)
    retention_days: RetentionDays | None = Field(None, description="keep the recording this "
                                                 "many days")
    upload_length: UploadLengthInt | None = Field(None, description="total bytes the recording "
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


class OwnedCreateSession(CreateSession):
    """Body of the processor's `POST /internal/v1/sessions`: the public one and its owner."""

    owner: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9-]+$",
                              description="id of the API token creating the session")


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

    model_config = ConfigDict(extra="forbid")

    offset: JsonInt = Field(ge=0, description="length of the prefix; must equal the committed "
                        "offset")
    sha256: str = Field(pattern=SHA256_BASE64,
                        description="standard base64 of the SHA-256 of the first `offset` bytes")

    def digest(self) -> bytes:
        """Return the 32 digest bytes (the pattern admits nothing else)."""
        return base64.b64decode(self.sha256, validate=True)
