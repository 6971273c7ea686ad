"""`GET /v1/node`: the node's public verifier key, for auditors (no auth)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sessions.api.deps import Processor
from sessions.api.models import NodeInfo, errors

router = APIRouter(prefix="/v1", tags=["node"])


@router.get("/node", response_model=NodeInfo, responses=errors(503),
            summary="The node's signed-note verifier key")
async def node(processor: Processor) -> Any:
    """Return the key name, the C2SP verifier key and the checkpoint origin prefix.

    Needs no token.  An auditor should pin the verifier key out of band: a key
    fetched from the node it audits only proves the node agrees with itself.
    """
    return await processor.node()
