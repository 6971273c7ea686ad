"""What every service app shares: error mapping, /health, /ready, /metrics, request metrics.

Each app owns a private Prometheus registry, so several apps can live in one
process (tests) without their counters colliding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessions.common.errors import NotReady, ServiceError, error_responses, install_error_handlers
from sessions.common.openapi import install_openapi

ReadyCheck = Callable[[], Awaitable[None]]

_stream_log = logging.getLogger("lucid.stream")

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The metric families every service exports, on a registry of its own."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Histogram("lucid_http_request_duration_seconds",
                                  "HTTP request latency", ["service", "method", "route", "status"],
                                  buckets=_BUCKETS, registry=r)
        self.errors = Counter("lucid_http_errors_total", "HTTP responses with status >= 400",
                              ["service", "route", "status"], registry=r)
        self.bytes_in = Counter("lucid_bytes_in_total", "payload bytes received",
                                ["service", "kind"], registry=r)
        self.bytes_out = Counter("lucid_bytes_out_total", "payload bytes sent",
                                 ["service", "kind"], registry=r)
        self.chunks_in = Counter("lucid_chunks_in_total", "chunks received or sealed",
                                 ["service"], registry=r)
        self.chunks_out = Counter("lucid_chunks_out_total", "chunks served or opened",
                                  ["service"], registry=r)
        self.compression_ratio = Gauge("lucid_compression_ratio",
                                       "plaintext bytes / sealed bytes over this process's life",
                                       ["service"], registry=r)
        self.sessions = Gauge("lucid_sessions", "sessions by state", ["service", "state"],
                              registry=r)
        self.service = service
        self._plain = 0
        self._sealed = 0

    def record_sealing(self, plaintext: int, sealed: int) -> None:
        """Account one chunk's plaintext and sealed sizes into the compression ratio."""
        self._plain += plaintext
        self._sealed += sealed
        if self._sealed:
            self.compression_ratio.labels(self.service).set(self._plain / self._sealed)


class _MetricsMiddleware:
    """Times every request by its route template (never the raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            m = self.metrics
            m.requests.labels(m.service, scope["method"], name, str(status)).observe(
                time.perf_counter() - start)
            if status >= 400:
                m.errors.labels(m.service, name, str(status)).inc()


_PROMETHEUS: dict[int | str, dict[str, Any]] = {200: {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}}}}


def _internal(path: str) -> bool:
    return path.startswith("/internal/")


def install_common(app: FastAPI, *, metrics: Metrics, ready: ReadyCheck,
                   before_scrape: Callable[[], Awaitable[None]] | None = None,
                   upstream: bool = True, metrics_dependencies: Sequence[Any] = ()) -> None:
    """Add error handlers, request metrics, /health, /ready, /metrics and the OpenAPI rewrite.

    `upstream`: the app's routes call another service (documented 503s).  Paths under
    `/internal/` are documented as needing the service token.  `metrics_dependencies`
    guard /metrics (the gateway's token check).
    """
    install_error_handlers(app)
    install_openapi(app, upstream=upstream, protected=_internal)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.get("/health", tags=["health"], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": metrics.service}

    @app.get("/ready", tags=["health"], summary="Readiness: the service's dependencies answer",
             responses=error_responses(503))
    async def ready_route() -> dict[str, str]:
        try:
            await ready()
        except NotReady:
            raise
        except Exception as exc:  # a dependency failing in any way means not ready
            raise NotReady(f"{metrics.service} dependency check failed: "
                           f"{type(exc).__name__}") from exc
        return {"status": "ready", "service": metrics.service}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
             responses=_PROMETHEUS, dependencies=list(metrics_dependencies))
    async def metrics_route(_: Request) -> Response:
        if before_scrape is not None:
            try:
                await before_scrape()
            except Exception as exc:  # a scrape must not fail because a gauge could not refresh
                logging.getLogger("lucid.metrics").warning("gauge refresh failed: %s",
                                                           type(exc).__name__)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class CutOnErrorResponse(StreamingResponse):
    """A streaming response that, if its body fails after the headers went out, cuts the stream.

    It logs one line (no traceback, no exception text) and returns without the
    final body message; the server then closes the connection, so the client
    sees a body short of its Content-Length: never wrong bytes, never a clean
    but short response.
    """

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        try:
            async for piece in self.body_iterator:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except ServiceError as exc:
            _stream_log.warning("stream cut: %s (%s)", exc.code, exc.detail)
            return
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the stream must be cut
            _stream_log.warning("stream cut: %s", type(exc).__name__)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
