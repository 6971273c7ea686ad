"""The one error hierarchy and its one HTTP mapping.

`error_from_body` must rebuild exactly the error an upstream service rendered;
`install_error_handlers` must render every failure as {"error", "detail", ...extra}
and never leak exception text or a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessions.common import errors
from sessions.common.errors import (
    InvalidState,
    RangeNotSatisfiable,
    ServiceError,
    UpstreamUnavailable,
    error_from_body,
    install_error_handlers,
)

# The classes sessions.common.errors itself defines (other packages add their own subclasses).
SUBCLASSES = sorted((c for c in ServiceError.__subclasses__()
                     if c.__module__ == ServiceError.__module__), key=lambda c: c.__name__)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------ the hierarchy


def test_every_subclass_has_its_own_stable_code() -> None:
    codes = [cls.code for cls in SUBCLASSES]
    assert len(SUBCLASSES) == 30  # + lease_lost, invalid_range
    assert len(set(codes)) == len(codes)
    assert "internal_error" not in codes and "upstream_error" not in codes
    for cls in SUBCLASSES:
        assert 400 <= cls.status <= 599, cls
        assert cls.detail and cls.detail != ServiceError.detail, cls


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_error_from_body_round_trips_every_subclass(cls: type[ServiceError]) -> None:
    original = cls("something specific went wrong", extra={"offset": 42, "state": "recording"})
    wire = json.loads(json.dumps(original.body()))
    rebuilt = error_from_body(original.status, wire)
    assert type(rebuilt) is cls
    assert (rebuilt.status, rebuilt.code) == (cls.status, cls.code)
    assert rebuilt.detail == "something specific went wrong"
    assert rebuilt.extra == {"offset": 42, "state": "recording"}
    assert rebuilt.body() == original.body()


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_default_detail_survives_and_status_comes_from_the_code(cls: type[ServiceError]) -> None:
    # the class decides the status, whatever status line carried the body
    rebuilt = error_from_body(500 if cls.status < 500 else 400, {"error": cls.code})
    assert type(rebuilt) is cls
    assert (rebuilt.status, rebuilt.detail, rebuilt.extra) == (cls.status, cls.detail, {})


def test_a_non_string_detail_falls_back_to_the_class_default() -> None:
    rebuilt = error_from_body(409, {"error": "invalid_state", "detail": 7, "state": "deleted"})
    assert type(rebuilt) is InvalidState
    assert rebuilt.detail == InvalidState.detail
    assert rebuilt.extra == {"state": "deleted"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 418, 422, 429, 451, 499])
@pytest.mark.parametrize("body", [
    {"error": "no_such_code", "detail": "x"},
    {"detail": "no code at all"},
    {"error": 17},
    ["not", "a", "dict"],
    "plain text",
    None,
], ids=["unknown-code", "no-code", "numeric-code", "list", "string", "none"])
def test_unknown_4xx_bodies_keep_their_status(status: int, body: Any) -> None:
    err = error_from_body(status, body)
    assert type(err) is ServiceError
    assert (err.status, err.code) == (status, "upstream_error")
    assert err.detail == "upstream rejected the request"
    assert err.body() == {"error": "upstream_error", "detail": "upstream rejected the request"}


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
@pytest.mark.parametrize("body", [
    {"error": "no_such_code"}, {"detail": "boom"}, None, "<html>Bad Gateway</html>",
], ids=["unknown-code", "no-code", "none", "html"])
def test_unknown_5xx_bodies_become_upstream_unavailable(status: int, body: Any) -> None:
    err = error_from_body(status, body)
    assert type(err) is UpstreamUnavailable
    assert (err.status, err.code, err.extra) == (503, "upstream_unavailable", {})


def test_a_known_code_on_a_5xx_keeps_its_class() -> None:
    err = error_from_body(502, {"error": "chunk_corrupt", "detail": "d", "index": 3})
    assert type(err) is errors.ChunkCorrupt
    assert err.extra == {"index": 3}


def test_extra_and_headers_default_to_fresh_dicts() -> None:
    a, b = InvalidState(), InvalidState()
    a.extra["x"] = 1
    a.headers["X"] = "1"
    assert (b.extra, b.headers) == ({}, {})
    assert str(a) == InvalidState.detail


# ------------------------------------------------------------------------- the HTTP mapping


class Boom(RuntimeError):
    pass


def build_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/service-error")
    async def service_error() -> None:
        raise InvalidState("a completed session cannot become recording",
                           extra={"state": "completed"})

    @app.get("/with-headers")
    async def with_headers() -> None:
        raise errors.Unauthorized(headers={"WWW-Authenticate": "Bearer"})

    @app.get("/range")
    async def range_() -> None:
        raise RangeNotSatisfiable(extra={"size": 10})

    @app.get("/range-no-size")
    async def range_no_size() -> None:
        raise RangeNotSatisfiable()

    @app.get("/typed")
    async def typed(limit: int) -> dict[str, int]:
        return {"limit": limit}

    @app.get("/unexpected")
    async def unexpected() -> None:
        raise Boom("secret-xyz")

    @app.post("/only-post")
    async def only_post() -> dict[str, str]:
        return {"ok": "yes"}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.mark.anyio
async def test_a_service_error_renders_its_code_detail_and_extra(
        client: httpx.AsyncClient) -> None:
    resp = await client.get("/service-error")
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "invalid_state",
                           "detail": "a completed session cannot become recording",
                           "state": "completed"}


@pytest.mark.anyio
async def test_a_service_errors_headers_are_sent(client: httpx.AsyncClient) -> None:
    resp = await client.get("/with-headers")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.json() == {"error": "unauthorized", "detail": errors.Unauthorized.detail}


@pytest.mark.anyio
async def test_a_416_with_a_size_says_the_real_length(client: httpx.AsyncClient) -> None:
    resp = await client.get("/range")
    assert resp.status_code == 416
    assert resp.headers["content-range"] == "bytes */10"
    assert resp.json() == {"error": "range_not_satisfiable",
                           "detail": RangeNotSatisfiable.detail, "size": 10}
    bare = await client.get("/range-no-size")
    assert bare.status_code == 416
    assert "content-range" not in bare.headers


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["", "?limit=abc", "?limit=1.5"],
                         ids=["missing", "not-a-number", "fraction"])
async def test_a_validation_error_is_422_invalid_parameter(client: httpx.AsyncClient,
                                                           query: str) -> None:
    resp = await client.get("/typed" + query)
    assert resp.status_code == 422
    body = resp.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "invalid_parameter"
    assert body["detail"].startswith("invalid request: query.limit: ")
    ok = await client.get("/typed?limit=5")
    assert (ok.status_code, ok.json()) == (200, {"limit": 5})


@pytest.mark.anyio
async def test_an_unexpected_error_is_a_bare_500(client: httpx.AsyncClient,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="lucid.errors"):
        resp = await client.get("/unexpected")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal_error", "detail": "internal error"}
    assert "secret-xyz" not in resp.text and "Traceback" not in resp.text
    assert "Boom" not in resp.text
    assert any(r.getMessage() == "unhandled Boom" for r in caplog.records)


@pytest.mark.anyio
async def test_an_unknown_route_is_404_not_found(client: httpx.AsyncClient) -> None:
    resp = await client.get("/no/such/route")
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "detail": errors.NotFound.detail}


@pytest.mark.anyio
async def test_a_wrong_method_is_405_method_not_allowed(client: httpx.AsyncClient) -> None:
    resp = await client.get("/only-post")
    assert resp.status_code == 405
    assert resp.json() == {"error": "method_not_allowed",
                           "detail": errors.MethodNotAllowed.detail}
    assert (await client.post("/only-post")).json() == {"ok": "yes"}


@pytest.mark.anyio
async def test_other_http_exceptions_map_by_status() -> None:
    from starlette.exceptions import HTTPException

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/{status}")
    async def raise_status(status: int) -> None:
        raise HTTPException(status_code=status, detail="starlette's own text")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        expected = {401: "unauthorized", 403: "forbidden", 413: "payload_too_large",
                    415: "unsupported_media_type", 400: "bad_request", 429: "bad_request"}
        seen = {}
        for status in expected:
            resp = await c.get(f"/{status}")
            assert "starlette's own text" not in resp.text
            seen[status] = (resp.status_code, resp.json()["error"])
    # an unmapped 4xx keeps its status, with the generic code
    assert seen == {401: (401, "unauthorized"), 403: (403, "forbidden"),
                    413: (413, "payload_too_large"), 415: (415, "unsupported_media_type"),
                    400: (400, "bad_request"), 429: (429, "bad_request")}


@pytest.mark.parametrize("code", ["insufficient_storage", "storage_full"])
def test_a_507_passes_through_with_its_code(code: str) -> None:
    """A full volume is the client's answer (507 and its code), never a 503 upstream error."""
    err = error_from_body(507, {"error": code, "detail": "full", "free_bytes": 7})
    assert (err.status, err.code, err.extra) == (507, code, {"free_bytes": 7})
