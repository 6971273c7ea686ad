"""The node's public verifier key, for third-party checkpoint verification."""

from __future__ import annotations

from fastapi import APIRouter

from sessions.processor.deps import EngineDep

router = APIRouter(prefix="/internal/v1", tags=["node"])


@router.get("/node")
async def node(engine: EngineDep) -> dict[str, str]:
    return engine.node()
