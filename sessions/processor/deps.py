"""Dependencies of the processor's routes: the engine, the service token, validated ids.

All are `async def`: FastAPI would run a plain `def` one on its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sessions.common.auth import require_token
from sessions.common.ids import check_session_id
from sessions.processor.engine import Engine


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def require_service(request: Request) -> None:
    """Only holders of the internal service token reach the processor's API."""
    require_token(request, request.app.state.service_token)


async def valid_session_id(session_id: str) -> str:
    return check_session_id(session_id)


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionId = Annotated[str, Depends(valid_session_id)]
