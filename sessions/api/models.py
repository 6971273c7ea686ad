"""Pydantic models at the gateway's edges that only the gateway has: its query and path types.

Every shape that crosses a process boundary (sessions, pages, proofs, reports, node
info, tokens, error bodies) lives in `sessions.contract.models` and is re-exported
here for the gateway's routes.  The public `Session` has no wrapped key, so an
internal field can never leak.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from sessions.common.errors import error_responses
from sessions.common.ids import is_session_id
from sessions.common.models import LabelFilter as _LabelFilter
from sessions.contract.models import (
    BadChunk as BadChunk,
)
from sessions.contract.models import (
    ConsistencyProof as ConsistencyProof,
)
from sessions.contract.models import (
    CreateSession as CreateSession,
)
from sessions.contract.models import (
    ErrorBody as ErrorBody,
)
from sessions.contract.models import (
    InclusionProof as InclusionProof,
)
from sessions.contract.models import (
    MetadataFinding as MetadataFinding,
)
from sessions.contract.models import (
    NodeInfo as NodeInfo,
)
from sessions.contract.models import (
    OwnedCreateSession as OwnedCreateSession,
)
from sessions.contract.models import (
    Session as Session,
)
from sessions.contract.models import (
    SessionPage as SessionPage,
)
from sessions.contract.models import (
    UploadResult as UploadResult,
)
from sessions.contract.models import (
    UploadStatus as UploadStatus,
)
from sessions.contract.models import (
    VerifyReport as VerifyReport,
)

LabelFilter = _LabelFilter
"""A list filter `key:value`: the session has label key with exactly that value."""


def _session_id(value: str) -> str:
    if not is_session_id(value):
        raise ValueError("must be a session id (26 characters of Crockford base32)")
    return value


SessionIdText = Annotated[str, AfterValidator(_session_id)]


errors = error_responses
