"""No route of any service pays a thread-pool hop for a dependency or its endpoint.

FastAPI runs a plain `def` dependency (or endpoint) on its thread pool: one thread
hop per request for work that takes microseconds.  On storage's chunk PUTs that
was ~13 % of its CPU, so every dependency and endpoint is `async def`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app as api_app
from sessions.common.secrets import new_token, write_new_secret
from sessions.core import MasterKey, NoteSigner
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app


def _calls(dependant: Any) -> Iterator[Any]:
    for dep in dependant.dependencies:
        yield from _calls(dep)
        yield dep.call


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Yield every APIRoute, also those of included routers (kept apart by newer FastAPI)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def _sync_parts(app: FastAPI) -> list[str]:
    found = []
    for route in _api_routes(app.routes):
        for call in [route.endpoint, *_calls(route.dependant)]:
            # as FastAPI decides: a coroutine function, or an object with an async __call__
            if not (inspect.iscoroutinefunction(call)
                    or inspect.iscoroutinefunction(type(call).__call__)):
                found.append(f"{route.path}: {getattr(call, '__qualname__', call)}")
    return found


def _secrets(root: Path) -> dict[str, Path]:
    files = {"token": root / "service.token", "admin": root / "admin.token",
             "master": root / "master.key", "signing": root / "signing.key"}
    write_new_secret(files["token"], new_token())
    write_new_secret(files["admin"], new_token())
    write_new_secret(files["master"], MasterKey.generate().to_text())
    write_new_secret(files["signing"], NoteSigner.generate("lucid-deps").key_text())
    return files


@pytest.mark.parametrize("service", ["storage", "processor", "api"])
def test_every_dependency_and_endpoint_is_async(service: str, tmp_path: Path) -> None:
    files = _secrets(tmp_path)
    app: FastAPI
    if service == "storage":
        app = storage_app(StorageSettings(mode="production", data_dir=tmp_path,
                                          service_token_file=files["token"]))
    elif service == "processor":
        app = processor_app(ProcessorSettings(
            mode="production", data_dir=tmp_path, service_token_file=files["token"],
            master_key_file=files["master"], signing_key_file=files["signing"]))
    else:
        app = api_app(ApiSettings(mode="production", data_dir=tmp_path,
                                  service_token_file=files["token"],
                                  admin_token_file=files["admin"]))
    assert len(list(_api_routes(app.routes))) > 5
    assert _sync_parts(app) == []
