"""Session ids: time-ordered, 26-character Crockford base32 (ULID layout).

Ids are validated against one strict pattern before any use, so an id can be
joined into a path or a query without further escaping.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from sessions.common.errors import InvalidId

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}\Z")
SESSION_ID_PATTERN = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
"""The id rule as an OpenAPI (ECMA-262) pattern; the services answer 400 `invalid_id` otherwise."""
SESSION_ID_DOC: dict[str, Any] = {"pattern": SESSION_ID_PATTERN, "minLength": 26, "maxLength": 26}


def new_session_id(*, now_ms: int | None = None) -> str:
    """Return a fresh id: 48-bit millisecond time then 80 random bits, so ids sort by creation."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError("now_ms must satisfy 0 <= now_ms < 2**48")
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def is_session_id(value: object) -> bool:
    """Return whether value is a well-formed session id."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def check_session_id(value: str) -> str:
    """Return value unchanged if it is a well-formed session id; raise InvalidId otherwise."""
    if not is_session_id(value):
        raise InvalidId("session id must be 26 characters of Crockford base32")
    return value
