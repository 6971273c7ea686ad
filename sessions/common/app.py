"""One skeleton for every service: `build_app` makes the gateway, the processor and storage alike.

A service brings its name, its settings, a lifespan that builds its typed resources, its
routers, a readiness check and a metrics hook.  The rest is the same for all three: one
FastAPIOffline construction with the package's version, one error mapping, `/health`,
`/ready` and `/metrics`, request metrics, the OpenAPI rewrite, the resources stored once
on `app.state.resources`, and for the internal services one service-token gate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from importlib import metadata
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from sessions.common.auth import ServiceTokenGate
from sessions.common.settings import CommonSettings
from sessions.common.web import Metrics, install_common

R = TypeVar("R")

Lifespan = Callable[[Metrics], AbstractAsyncContextManager[R]]
"""Builds a service's resources (clients, stores, background tasks) and closes them after."""

ReadyCheck = Callable[[R], Awaitable[None]]
"""Raises (NotReady or any error) while a dependency of the service does not answer."""

ScrapeHook = Callable[[R, Metrics], Awaitable[None]]
"""Refreshes gauges before `/metrics` is rendered."""


def package_version() -> str:
    """Return the installed version of lucid-sessions, or "0.0.0+local" from a bare checkout."""
    try:
        return metadata.version("lucid-sessions")
    except metadata.PackageNotFoundError:
        return "0.0.0+local"


async def prime_routes(app: FastAPI) -> None:
    """Route one request for a path no route has through the app's router, before serving.

    FastAPI builds an included router's routes (their parameter models, dependencies)
    on the first request that walks them, and that request pays for it: about 0.1 CPU s
    over the three services, the first upload after a start doing the work of every
    route.  A path nothing matches walks them all, so no client request pays it.
    """
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/-/prime",
        "raw_path": b"/-/prime", "root_path": "", "query_string": b"", "headers": [],
        "client": None, "server": None, "state": {}, "app": app}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    with suppress(HTTPException):  # the 404 the router raises inside an app
        await app.router(scope, receive, send)


def build_app(service: str, settings: CommonSettings, *, title: str, lifespan: Lifespan[R],
              routers: Sequence[APIRouter], ready: ReadyCheck[R], internal: bool,
              before_scrape: ScrapeHook[R] | None = None, upstream: bool = True,
              description: str = "", tags: list[dict[str, Any]] | None = None,
              middleware: Sequence[Middleware] = (),
              metrics_dependencies: Sequence[Any] = ()) -> FastAPI:
    """Return the app of one service, its resources built by `lifespan` when it starts.

    `internal`: only `/health` and `/ready` answer without the service token, which is
    read from settings now (ConfigError if unusable).  Internal services answer their
    paths exactly (no trailing-slash redirects).  `upstream`: the routes call another
    service (documented 503s).  `middleware` wraps the routes, inside the request
    metrics; `metrics_dependencies` guard `/metrics` (the gateway's token check).
    """
    metrics = Metrics(service)

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(metrics) as resources:
            app.state.resources = resources
            await prime_routes(app)
            yield

    app = FastAPIOffline(title=title, version=package_version(), description=description,
                         openapi_tags=tags, lifespan=run, redirect_slashes=not internal)
    app.state.settings = settings
    app.state.metrics = metrics
    for layer in middleware:
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    if internal:
        app.add_middleware(ServiceTokenGate, token=settings.service_token())

    async def check_ready() -> None:
        await ready(app.state.resources)

    async def refresh() -> None:
        if before_scrape is not None:
            await before_scrape(app.state.resources, metrics)

    install_common(app, metrics=metrics, ready=check_ready,
                   before_scrape=refresh if before_scrape is not None else None,
                   upstream=upstream, metrics_dependencies=metrics_dependencies)
    for router in routers:
        app.include_router(router)
    return app
