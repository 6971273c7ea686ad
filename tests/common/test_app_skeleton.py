"""One skeleton: the three apps come out of `sessions.common.app.build_app` alike.

Same version (the package's), same error handlers, same `/health` `/ready` `/metrics`,
resources stored once on `app.state.resources`; the internal services share one token
gate that refuses every route without the service token, `/docs` and `/openapi.json`
included, while `/health` and `/ready` stay public.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from sessions.api import deps as api_deps
from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app as api_app
from sessions.common.app import package_version
from sessions.common.auth import ServiceTokenGate
from sessions.common.ids import new_session_id
from sessions.processor import deps as processor_deps
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage import deps as storage_deps
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

pytestmark = pytest.mark.anyio
WRONG = {"Authorization": "Bearer wrong-token-" + "x" * 40}
PARAMS = {"session_id": new_session_id(), "index": "0", "token_id": "0123456789abcdef"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Apps:
    api: FastAPI
    processor: FastAPI
    storage: FastAPI
    token: str

    def all(self) -> dict[str, FastAPI]:
        return {"api": self.api, "processor": self.processor, "storage": self.storage}


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[Apps]:
    """The three apps wired in one process (local mode: secrets generated), lifespans run."""
    common: dict[str, Any] = {"data_dir": tmp_path}
    storage = storage_app(StorageSettings(**common))
    processor = processor_app(ProcessorSettings(**common, storage_url="http://storage"),
                              storage_transport=httpx.ASGITransport(app=storage))
    api = api_app(ApiSettings(**common, processor_url="http://processor"),
                  processor_transport=httpx.ASGITransport(app=processor))
    async with AsyncExitStack() as stack:
        for app in (storage, processor, api):
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield Apps(api, processor, storage,
                   (tmp_path / "secrets" / "service.token").read_text().strip())


def _client(app: FastAPI, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc",
                             headers=headers)


def _routes(routes: list[Any]) -> Iterator[Any]:
    """Yield every route, also those of included routers (kept apart by newer FastAPI)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from _routes(route.original_router.routes)
        else:
            yield route


def _requests(app: FastAPI) -> Iterator[tuple[str, str]]:
    """Yield (method, concrete path) of every route the app serves, docs and assets too."""
    for route in _routes(app.routes):
        if isinstance(route, Mount):  # the offline docs' static assets
            yield "GET", route.path + "/swagger-ui.css"
            continue
        assert isinstance(route, APIRoute | Route), route
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PARAMS.get(m.group(1), "x"), route.path)
        for method in sorted(route.methods or ()):
            yield method, path


async def test_the_three_apps_share_version_handlers_and_common_routes(apps: Apps) -> None:
    built = apps.all()
    assert {app.version for app in built.values()} == {package_version()}
    handlers = {name: set(app.exception_handlers) for name, app in built.items()}
    assert handlers["api"] == handlers["processor"] == handlers["storage"]
    for name, app in built.items():
        paths = {r.path for r in _routes(app.routes) if isinstance(r, Route)}
        assert {"/health", "/ready", "/metrics", "/openapi.json", "/docs"} <= paths, name
        assert app.openapi()["info"]["version"] == package_version()


async def test_resources_are_typed_and_stored_once(apps: Apps) -> None:
    assert isinstance(apps.api.state.resources, api_deps.Resources)
    assert isinstance(apps.processor.state.resources, processor_deps.Resources)
    assert isinstance(apps.storage.state.resources, storage_deps.Resources)
    for app in apps.all().values():  # nothing else the lifespan built sits beside them
        assert set(vars(app.state)["_state"]) == {"settings", "metrics", "resources"}


async def test_one_gate_on_the_internal_services_none_on_the_gateway(apps: Apps) -> None:
    def gates(app: FastAPI) -> int:
        return sum(m.cls is ServiceTokenGate for m in app.user_middleware)

    assert (gates(apps.processor), gates(apps.storage), gates(apps.api)) == (1, 1, 0)
    for app in (apps.processor, apps.storage):  # no route checks the token a second way
        for route in _routes(app.routes):
            if isinstance(route, APIRoute):
                calls = {getattr(d.call, "__name__", "") for d in route.dependant.dependencies}
                assert not calls & {"require_service", "check_service_token"}, route.path


@pytest.mark.parametrize("service", ["processor", "storage"])
@pytest.mark.parametrize("headers", [{}, WRONG, {"Authorization": "Bearer "}])
async def test_the_gate_refuses_every_internal_route_without_the_token(
        apps: Apps, service: str, headers: dict[str, str]) -> None:
    app = apps.processor if service == "processor" else apps.storage
    requests = list(_requests(app))
    assert {("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/metrics")} <= set(requests)
    assert len(requests) > 20
    async with _client(app, **headers) as anon:
        for method, path in [*requests, ("GET", "/nowhere"), ("POST", "/internal/v1/x")]:
            if path in ("/health", "/ready"):
                continue
            resp = await anon.request(method, path, content=b"{not json")
            assert resp.status_code == 401, (method, path, resp.status_code)
            if method != "HEAD":
                assert resp.json()["error"] == "unauthorized", (method, path)
            assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("service", ["api", "processor", "storage"])
async def test_health_and_ready_are_public(apps: Apps, service: str) -> None:
    async with _client(apps.all()[service], **WRONG) as anon:
        for path in ("/health", "/ready"):
            resp = await anon.get(path)
            assert resp.status_code == 200, (path, resp.text)
            assert resp.json()["service"] == service


async def test_the_token_opens_the_internal_docs(apps: Apps) -> None:
    for app in (apps.processor, apps.storage):
        async with _client(app, Authorization=f"Bearer {apps.token}") as svc:
            for path in ("/openapi.json", "/docs", "/metrics"):
                assert (await svc.get(path)).status_code == 200, path


@pytest.mark.parametrize("service", ["processor", "storage"])
async def test_internal_services_answer_exact_paths_only(apps: Apps, service: str) -> None:
    app = apps.processor if service == "processor" else apps.storage
    async with _client(app, Authorization=f"Bearer {apps.token}") as svc:
        assert (await svc.get("/internal/v1/sessions")).status_code == 200
        resp = await svc.get("/internal/v1/sessions/")  # no redirect to an undocumented path
        assert resp.status_code == 404 and resp.json()["error"] == "not_found"


@pytest.mark.parametrize("service", ["api", "processor", "storage"])
async def test_routes_are_built_before_the_first_request(
        apps: Apps, service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI builds a router's routes on the first request that walks them (~0.1 CPU s
    over the three services); the lifespan does it (`prime_routes`), so no client pays."""
    import fastapi.routing

    built: list[object] = []
    real = fastapi.routing._EffectiveRouteContext.from_api_route

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs.get("original_route"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing._EffectiveRouteContext, "from_api_route",
                        staticmethod(counting))
    app = apps.all()[service]
    async with _client(app, Authorization=f"Bearer {apps.token}") as client:
        for method, path in _requests(app):
            await client.request(method, path)
    assert built == [], f"{len(built)} routes of {service} were built by client requests"
