"""The node: its public verifier keys for auditors (no auth), and key rotation (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sessions.api.deps import Processor, authenticate
from sessions.api.models import errors
from sessions.contract.models import KeyRotation, NodeInfo, RotateSigningIn

router = APIRouter(prefix="/v1", tags=["node"])


@router.get("/node", response_model=NodeInfo, responses=errors(503),
            summary="The node's signed-note verifier key")
async def node(processor: Processor) -> NodeInfo:
    """Return the key name, the C2SP verifier key and the checkpoint origin prefix.

    Needs no token.  An auditor should pin the verifier key out of band: a key
    fetched from the node it audits only proves the node agrees with itself.
    """
    return await processor.node()


@router.post("/keys/rotate", dependencies=[Depends(authenticate)], response_model=KeyRotation,
             responses=errors(401, 503),
             summary="Rewrap every session key under the current master key")
async def rotate_keys(processor: Processor) -> KeyRotation:
    """Rewrap each session's data key under the processor's current master key.

    Restart the processor with the new key in `LUCID_MASTER_KEY_FILE` and the old one
    in `LUCID_PREVIOUS_MASTER_KEY_FILES`, call this, then drop the old key file.
    Chunk data is not touched.  Returns counts and any key ids it could not unwrap.
    """
    return await processor.rotate_keys()


@router.post("/keys/signing/rotate", dependencies=[Depends(authenticate)],
             response_model=NodeInfo, responses=errors(401, 409, 422, 503),
             summary="Retire the node's signing key for a fresh one")
async def rotate_signing_key(processor: Processor,
                             body: RotateSigningIn | None = None) -> NodeInfo:
    """Generate a new signing key; every old key stays in `GET /v1/node`'s `key_history`.

    Old checkpoints keep verifying with the key that signed them.  After a leak, pass
    `compromised_after`: verifiers then refuse checkpoints by that key unless they
    obtained them before that time (README, "Evidence").  409 `rotation_refused` when
    the key comes from `LUCID_SIGNING_KEY_FILE` (replace the file and restart instead).
    """
    return await processor.rotate_signing_key(body or RotateSigningIn(compromised_after=None))
