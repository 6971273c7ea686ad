"""`POST /v1/sessions/{id}/upload/prefix-check`: before resuming, is what the node holds my file?"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sessions.api.deps import Processor, SessionId, authenticate
from sessions.api.models import errors
from sessions.common.models import PrefixCheck
from sessions.contract.models import PrefixCheckResult

router = APIRouter(prefix="/v1/sessions/{session_id}/upload", tags=["upload"],
                   dependencies=[Depends(authenticate)])

DESCRIPTION = """
Send the SHA-256 of the first `offset` bytes of the file you mean to continue (or have
uploaded), with `offset` = the committed offset.  The node reads its committed chunks back,
verified as replay reads them, and compares the digest of their plaintext in constant time:
`{"match": true}` means the session holds exactly that prefix, so resuming from `offset`
(or, once completed, calling it uploaded) is safe.  It costs one read-back of the session.

* `409 offset_mismatch`: `offset` is not the committed offset (the body carries it);
* `409 invalid_state`: the session was deleted;
* `422 invalid_parameter`: `offset` or `sha256` (padded standard base64 of 32 bytes)
  malformed;
* `502 chunk_corrupt`: a committed chunk failed verification.
"""


@router.post("/prefix-check", response_model=PrefixCheckResult,
             responses=errors(400, 401, 404, 409, 413, 422, 502, 503),
             summary="Check that the committed bytes are a file's prefix",
             description=DESCRIPTION)
async def prefix_check(session_id: SessionId, body: PrefixCheck,
                       processor: Processor) -> PrefixCheckResult:
    return await processor.prefix_check(session_id, body)
