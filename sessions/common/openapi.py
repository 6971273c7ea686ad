"""The OpenAPI document as the server enforces it: one error body, cross-cutting statuses.

FastAPI documents a 422 `HTTPValidationError` it never sends here (every error
body is `ErrorBody`, sessions/contract/models.py) and cannot know what the
app-wide machinery answers: 401 from the token check, 400 `invalid_id` from the
session-id check, 500 from the catch-all handler.  `install_openapi` rewrites the
generated document once, where the statuses come from, instead of in every route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from sessions.common.ids import SESSION_ID_PATTERN
from sessions.contract.models import ErrorBody

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")
_WHY = {
    400: "`invalid_id` (a malformed session id) or `bad_request` (e.g. a body that is not JSON)",
    401: "`unauthorized`: no or a wrong bearer token",
    422: "`invalid_parameter`: a parameter or the body breaks its documented constraints",
    500: "`internal_error`: a bug; the body never carries exception text",
    503: "`upstream_unavailable`: a service this one depends on does not answer",
}
BEARER = {"type": "http", "scheme": "bearer"}
REQUIRED = "x-lucid-required"
"""A parameter schema marked so is documented as required: the handler takes it as optional
only to answer its absence with its own error (a 400 `bad_request`) instead of FastAPI's 422."""


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    return {"description": description or _WHY.get(status, "see `error`"),
            "content": {"application/json": {"schema": dict(_ERROR_REF)}}}


def _takes_input(op: dict[str, Any]) -> bool:
    """Return whether FastAPI validates something of op other than the session id."""
    names = {p["name"] for p in op.get("parameters", ()) if p.get("in") in ("path", "query")}
    return bool(names - {"session_id"}) or "requestBody" in op


def _takes_an_id(op: dict[str, Any]) -> bool:
    """Return whether op has a parameter checked as a session id (400 `invalid_id`)."""
    return any(p.get("schema", {}).get("pattern") == SESSION_ID_PATTERN
               for p in op.get("parameters", ()))


def _document_operation(path: str, method: str, op: dict[str, Any], *,
                        upstream: bool, protected: Callable[[str], bool]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    for param in op.get("parameters", ()):
        schema = param.get("schema", {})
        any_of = schema.get("anyOf")
        if any_of and any(s.get("type") == "null" for s in any_of) and len(any_of) == 2:
            # `int | None = None`: absent, never null (a query or header cannot be null)
            del schema["anyOf"]
            schema.update(next(s for s in any_of if s.get("type") != "null"))
        if schema.pop(REQUIRED, False):
            param["required"] = True
            schema.pop("default", None)
    for code, response in list(responses.items()):
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("$ref", "").endswith("/HTTPValidationError"):
            responses[code] = _error_response(int(code))
    if method == "head":  # a HEAD answer has no body, whatever GET's would be
        for code, response in responses.items():
            if code.startswith("2"):
                response.pop("content", None)
    if protected(path):
        op.setdefault("security", [{"bearer": []}])
    wanted = [500]
    wanted += [401] if op.get("security") else []
    wanted += [400] if "{session_id}" in path or _takes_an_id(op) else []
    wanted += [422] if _takes_input(op) else []
    wanted += [400] if "application/json" in op.get("requestBody", {}).get("content", {}) else []
    wanted += [503] if upstream else []
    for status in wanted:
        responses.setdefault(str(status), _error_response(status))
    for response in responses.values():
        if response.get("content", {}).get("application/json", {}).get("schema") == _ERROR_REF:
            response["content"]["application/json"]["schema"] = dict(_ERROR_REF)


def document_contract(schema: dict[str, Any], *, upstream: bool,
                      protected: Callable[[str], bool]) -> dict[str, Any]:
    """Return schema with every operation's error statuses and bodies as the server sends them.

    `upstream`: the app's routes call another service (so may answer 503);
    `protected(path)`: the path needs the bearer token (so may answer 401).
    """
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                live = upstream and path not in ("/health", "/metrics")
                _document_operation(path, method, op, upstream=live, protected=protected)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _FASTAPI_ONLY:
        schemas.pop(name, None)
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    if any("security" in op for item in schema.get("paths", {}).values()
           for op in item.values() if isinstance(op, dict)):
        components.setdefault("securitySchemes", {}).setdefault("bearer", BEARER)
    return schema


def install_openapi(app: FastAPI, *, upstream: bool,
                    protected: Callable[[str], bool] = lambda _: False) -> None:
    """Make app.openapi() return the generated document rewritten by document_contract."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_contract(generate(), upstream=upstream,
                                                   protected=protected)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
