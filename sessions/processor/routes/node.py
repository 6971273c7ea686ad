"""The node's public verifier key, for third-party checkpoint verification."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sessions.common.errors import error_responses
from sessions.processor.deps import EngineDep

router = APIRouter(prefix="/internal/v1", tags=["node"])


@router.get("/node")
async def node(engine: EngineDep) -> dict[str, Any]:
    return engine.node()


@router.post("/keys/rotate", responses=error_responses(409))
async def rotate_keys(engine: EngineDep) -> dict[str, Any]:
    """Rewrap every session key under the current master key (chunks are not touched)."""
    return await engine.rotate_keys()
