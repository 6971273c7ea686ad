"""The node: its public verifier key for auditors (no auth), and master key rotation (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from sessions.api.deps import Processor, authenticate
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


@router.post("/keys/rotate", dependencies=[Depends(authenticate)], responses=errors(401, 503),
             summary="Rewrap every session key under the current master key")
async def rotate_keys(processor: Processor) -> Any:
    """Rewrap each session's data key under the processor's current master key.

    Restart the processor with the new key in `LUCID_MASTER_KEY_FILE` and the old one
    in `LUCID_PREVIOUS_MASTER_KEY_FILES`, call this, then drop the old key file.
    Chunk data is not touched.  Returns counts and any key ids it could not unwrap.
    """
    return await processor.rotate_keys()
