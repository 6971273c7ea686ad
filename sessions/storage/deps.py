"""`Annotated` dependencies of the storage routes: resources from the lifespan, and checks.

All are `async def`: FastAPI runs a plain `def` dependency on its thread pool, one
thread hop per dependency per request, which cost storage ~13 % of its CPU.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from sessions.common.auth import require_token
from sessions.common.ids import SESSION_ID_DOC, check_session_id
from sessions.storage.chunkstore import ChunkStore
from sessions.storage.config import Settings
from sessions.storage.metastore import MetadataStore
from sessions.storage.records import MAX_CHUNK_INDEX
from sessions.storage.service import StorageService


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metastore(request: Request) -> MetadataStore:
    """Return the metadata store; raise StorageUnavailable until its migrations have run."""
    request.app.state.readiness.require()
    store: MetadataStore = request.app.state.metastore
    return store


async def get_chunkstore(request: Request) -> ChunkStore:
    store: ChunkStore = request.app.state.chunkstore
    return store


async def get_service(request: Request) -> StorageService:
    """Return the storage service; raise StorageUnavailable until metadata migrations ran."""
    request.app.state.readiness.require()
    service: StorageService = request.app.state.service
    return service


async def check_service_token(request: Request) -> None:
    """Raise Unauthorized (401) unless the request carries the internal service token."""
    require_token(request, request.app.state.service_token)


async def valid_session_id(
        session_id: Annotated[str, Path(description="26-character session id",
                                        json_schema_extra=SESSION_ID_DOC)]) -> str:
    """Return the path's session id; raise InvalidId (400) if it is malformed."""
    return check_session_id(session_id)


SettingsDep = Annotated[Settings, Depends(get_settings)]
Meta = Annotated[MetadataStore, Depends(get_metastore)]
Chunks = Annotated[ChunkStore, Depends(get_chunkstore)]
Service = Annotated[StorageService, Depends(get_service)]
SessionId = Annotated[str, Depends(valid_session_id)]
ChunkIndex = Annotated[int, Path(ge=0, le=MAX_CHUNK_INDEX, description="chunk index")]
ServiceToken = Depends(check_service_token)
