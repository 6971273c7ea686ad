"""`Annotated` dependencies of the storage routes: resources from the lifespan, and checks.

The service token is checked before routing, by the app's gate (`sessions.common.app`).
All are `async def`: FastAPI runs a plain `def` dependency on its thread pool, one
thread hop per dependency per request (README, Performance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request

from sessions.common.ids import SESSION_ID_DOC, check_session_id
from sessions.storage.chunkstore import ChunkStore
from sessions.storage.config import Settings
from sessions.storage.metastore import MetadataStore
from sessions.storage.readiness import MetadataReadiness
from sessions.storage.records import MAX_CHUNK_INDEX
from sessions.storage.service import StorageService


@dataclass(frozen=True)
class Resources:
    """What storage's lifespan builds (`main.lifespan`): the stores and the service on them."""

    readiness: MetadataReadiness
    metastore: MetadataStore
    chunkstore: ChunkStore
    service: StorageService


def resources(request: Request) -> Resources:
    """Return what the app's lifespan built."""
    built: Resources = request.app.state.resources
    return built


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metastore(request: Request) -> MetadataStore:
    """Return the metadata store; raise StorageUnavailable until its migrations have run."""
    built = resources(request)
    built.readiness.require()
    return built.metastore


async def get_chunkstore(request: Request) -> ChunkStore:
    return resources(request).chunkstore


async def get_service(request: Request) -> StorageService:
    """Return the storage service; raise StorageUnavailable until metadata migrations ran."""
    built = resources(request)
    built.readiness.require()
    return built.service


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
