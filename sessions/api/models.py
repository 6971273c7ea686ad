"""The gateway's own query and path types, and its error-response documentation helper.

Every shape that crosses a process boundary (sessions, pages, proofs, reports, node
info, tokens, error bodies) lives in `sessions.contract.models`.  The public `Session`
has no wrapped key, so an internal field can never leak.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from sessions.common.errors import error_responses
from sessions.common.ids import is_session_id
from sessions.common.models import LabelFilter as _LabelFilter

LabelFilter = _LabelFilter
"""A list filter `key:value`: the session has label key with exactly that value."""


def _session_id(value: str) -> str:
    if not is_session_id(value):
        raise ValueError("must be a session id (26 characters of Crockford base32)")
    return value


SessionIdText = Annotated[str, AfterValidator(_session_id)]


errors = error_responses
