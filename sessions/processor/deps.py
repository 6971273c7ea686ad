"""Dependencies of the processor's routes: the engine, validated ids.

The service token is checked before routing, by the app's gate (`sessions.common.app`).

All are `async def`: FastAPI would run a plain `def` one on its thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request

from sessions.common.ids import SESSION_ID_DOC, check_session_id
from sessions.processor.audit import BoundAudit
from sessions.processor.engine import Engine
from sessions.processor.scrub import Scrubber
from sessions.processor.storage_client import StorageClient
from sessions.processor.sweeper import Sweeper


@dataclass(frozen=True)
class Resources:
    """What the processor's lifespan builds (`main.lifespan`): storage client, engine, workers."""

    storage: StorageClient
    engine: Engine
    sweeper: Sweeper
    scrubber: Scrubber | None


def resources(request: Request) -> Resources:
    """Return what the app's lifespan built."""
    built: Resources = request.app.state.resources
    return built


async def get_engine(request: Request) -> Engine:
    return resources(request).engine


async def get_audit(request: Request) -> BoundAudit:
    """Return the audit recorder bound to this request's actor and client (gateway headers)."""
    engine = resources(request).engine
    return engine.audit.bind(request.headers, request.client.host if request.client else None)


async def valid_session_id(
        session_id: Annotated[str, Path(description="26-character session id",
                                        json_schema_extra=SESSION_ID_DOC)]) -> str:
    """Return the path's session id; raise InvalidId (400) if it is malformed."""
    return check_session_id(session_id)


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionId = Annotated[str, Depends(valid_session_id)]
AuditDep = Annotated[BoundAudit, Depends(get_audit)]
"""`await audit(action, session_id, detail)` once an action succeeded (one entry per request)."""
