"""Who may call what: the one table of gateway routes and the roles allowed on each.

Every route the `authenticate` dependency protects is looked up here by
`"<METHOD> <path template>"`.  A route missing from `RULES` is admin-only (fail
closed) and fails `tests/api/test_auth_matrix.py`, so a new route cannot ship
without a rule.  `PUBLIC` lists the routes that need no token, by design.

A recorder acts on its own sessions only: on a route with `{session_id}`, a
recorder's token must be the one that created the session, else the answer is
404 `session_not_found`, exactly as for an id never issued (existence is not revealed).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from sessions.common.errors import Forbidden
from sessions.common.tokens import Role

RECORDER, VIEWER, AUDITOR, ADMIN = Role.RECORDER, Role.VIEWER, Role.AUDITOR, Role.ADMIN
_S = "/v1/sessions/{session_id}"
_TUS = "/_tus/v1/sessions"


def _roles(*roles: Role) -> frozenset[Role]:
    return frozenset({ADMIN, *roles})  # admin may do everything


RULES: dict[str, frozenset[Role]] = {
    # sessions
    "POST /v1/sessions": _roles(RECORDER),
    "GET /v1/sessions": _roles(VIEWER, AUDITOR),
    f"GET {_S}": _roles(VIEWER, AUDITOR),
    f"DELETE {_S}": _roles(),
    f"POST {_S}/finalize": _roles(RECORDER),
    f"GET {_S}/manifest": _roles(RECORDER, AUDITOR),
    f"GET {_S}/checkpoint": _roles(RECORDER, AUDITOR),
    f"GET {_S}/proof/inclusion": _roles(RECORDER, AUDITOR),
    f"GET {_S}/proof/consistency": _roles(RECORDER, AUDITOR),
    f"POST {_S}/verify": _roles(VIEWER, AUDITOR),
    f"PUT {_S}/hold": _roles(),
    f"DELETE {_S}/hold": _roles(),
    # upload (JSON API and tus, whose routes live under a hidden prefix)
    f"HEAD {_S}/upload": _roles(RECORDER),
    f"GET {_S}/upload": _roles(RECORDER),
    f"PATCH {_S}/upload": _roles(RECORDER),
    f"POST {_S}/upload/prefix-check": _roles(RECORDER),
    f"POST {_TUS}": _roles(RECORDER),
    f"HEAD {_TUS}/{{session_id}}/upload": _roles(RECORDER),
    f"PATCH {_TUS}/{{session_id}}/upload": _roles(RECORDER),
    f"DELETE {_TUS}/{{session_id}}/upload": _roles(),
    # replay: plaintext for viewers, sealed chunks for auditors
    f"GET {_S}/replay": _roles(VIEWER),
    f"GET {_S}/chunks/{{index}}": _roles(AUDITOR),
    # node and tokens
    "POST /v1/keys/rotate": _roles(),
    "POST /v1/keys/signing/rotate": _roles(),
    # the audit log: who did what (no plaintext)
    "GET /v1/audit": _roles(AUDITOR),
    "GET /v1/audit/checkpoint": _roles(AUDITOR),
    "POST /v1/tokens": _roles(),
    "GET /v1/tokens": _roles(),
    "DELETE /v1/tokens/{token_id}": _roles(),
    # operations: any valid token (a scraper gets a token of its own)
    "GET /metrics": frozenset(Role),
}

PUBLIC: frozenset[str] = frozenset({
    "GET /v1/node",  # the verifier key
    "GET /health", "GET /ready",
    # the API is public and documented: its OpenAPI document and viewers need no token
    "GET /openapi.json", "GET /docs", "GET /docs/oauth2-redirect", "GET /redoc",
    # tus discovery: server limits only; browsers send a CORS preflight without credentials
    "OPTIONS /v1/sessions", f"OPTIONS {_S}/upload",
})


def rule_key(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def allowed(method: str, path: str) -> frozenset[Role]:
    """Return the roles allowed on a route (admin only when it has no rule)."""
    return RULES.get(rule_key(method, path), _roles())


def authorize(role: Role, method: str, path: str) -> None:
    """Raise Forbidden (403 `forbidden`) unless role may call the route."""
    if role not in allowed(method, path):
        raise Forbidden(f"a {role.value} token may not call {method.upper()} {path}")


def owner_bound(role: Role, path: str) -> bool:
    """Return whether the call must be on a session the token created (a recorder's)."""
    return role is RECORDER and "{session_id}" in path


def document_roles(app: FastAPI) -> None:
    """Make the gateway's OpenAPI document name each operation's roles, 403 and 429."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "security" not in op:
                    continue
                roles = sorted(r.value for r in allowed(method, path))
                op["description"] = (op.get("description", "") +
                                     f"\n\n**Roles:** {', '.join(roles)}.").strip()
                op["responses"].setdefault("403", _error(
                    "`forbidden`: the token's role may not call this operation"))
                op["responses"].setdefault("429", _error(
                    "`rate_limited`: this token sent too many requests; see Retry-After",
                    headers={"Retry-After": {"description": "seconds to wait",
                                             "schema": {"type": "integer"}}}))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    if headers:
        out["headers"] = headers
    return out
