"""Dependencies of the processor's routes: the engine, the service token, validated ids.

All are `async def`: FastAPI would run a plain `def` one on its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from sessions.common.auth import require_token
from sessions.common.ids import SESSION_ID_DOC, check_session_id
from sessions.processor.audit import BoundAudit
from sessions.processor.engine import Engine


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_audit(request: Request) -> BoundAudit:
    """Return the audit recorder bound to this request's actor and client (gateway headers)."""
    engine: Engine = request.app.state.engine
    return engine.audit.bind(request.headers, request.client.host if request.client else None)


async def require_service(request: Request) -> None:
    """Only holders of the internal service token reach the processor's API."""
    require_token(request, request.app.state.service_token)


async def valid_session_id(
        session_id: Annotated[str, Path(description="26-character session id",
                                        json_schema_extra=SESSION_ID_DOC)]) -> str:
    """Return the path's session id; raise InvalidId (400) if it is malformed."""
    return check_session_id(session_id)


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionId = Annotated[str, Depends(valid_session_id)]
AuditDep = Annotated[BoundAudit, Depends(get_audit)]
"""`await audit(action, session_id, detail)` once an action succeeded (one entry per request)."""
