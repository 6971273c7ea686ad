"""Access control on the three real apps in one process, with tokens in real (SQLite) storage.

The auth matrix is generated from the gateway's routes: every route x {each role, a
recorder on another's session, no token, a malformed header, a wrong token, an
unknown token id, a revoked token, an expired token} gets the status the rules table
(`sessions.api.access`) documents.  A route without a rule fails here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from sessions.api import access
from sessions.api.auth import Bounded, RateLimiter, TokenVerifier
from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app as api_app
from sessions.common.errors import RateLimited, Unauthorized
from sessions.common.tokens import Role, StoredToken, new_token, parse_token, secret_digest
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

pytestmark = pytest.mark.anyio
MIB = 1 << 20
PLAINTEXT = b"TOP-SECRET-PLAINTEXT-" * 100  # one chunk
UPLOAD = {"Content-Type": "application/offset+octet-stream"}
DOCS_ASSETS = "/static-offline-docs"
ANONYMOUS = ("none", "malformed", "basic", "wrong", "unknown", "revoked", "expired")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Node:
    """Gateway(s) -> processor -> storage in one process; `tokens` maps a principal to a token."""

    gateways: list[FastAPI]
    processor: httpx.AsyncClient
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def client(self, n: int = 0) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.gateways[n]),
                                 base_url="http://api", timeout=60)

    def auth(self, who: str) -> dict[str, str]:
        if who == "none":
            return {}
        if who == "basic":
            return {"Authorization": f"Basic {self.tokens['admin']}"}
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def _node(tmp_path: Path, gateways: int = 1, **api: Any) -> AsyncIterator[Node]:
    common: dict[str, Any] = {"data_dir": tmp_path}
    storage = storage_app(StorageSettings(**common))
    processor = processor_app(ProcessorSettings(**common, chunk_size=MIB,
                                                storage_url="http://storage"),
                              storage_transport=httpx.ASGITransport(app=storage))
    apps = [api_app(ApiSettings(**common, processor_url="http://processor", **api),
                    processor_transport=httpx.ASGITransport(app=processor))
            for _ in range(gateways)]
    async with AsyncExitStack() as stack:
        for app in (storage, processor, *apps):
            await stack.enter_async_context(app.router.lifespan_context(app))
        secrets = tmp_path / "secrets"
        service = (secrets / "service.token").read_text().strip()
        internal = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=processor), base_url="http://processor",
            headers={"Authorization": f"Bearer {service}"}))
        node = Node(apps, internal)
        node.tokens["admin"] = (secrets / "admin.token").read_text().strip()
        yield node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for n in _node(tmp_path):
        yield n


async def make_token(node: Node, role: str, *, name: str = "t", expires_in: int | None = None,
                     gateway: int = 0) -> tuple[str, str]:
    """Return (token, id) of a token the bootstrap admin created through the API."""
    async with node.client(gateway) as c:
        r = await c.post("/v1/tokens", headers=node.auth("admin"),
                         json={"name": name, "role": role, "expires_in": expires_in})
    assert r.status_code == 201, r.text
    body = r.json()
    assert "secret_hash" not in body and body["token"].startswith(f"lucid_{body['id']}_")
    return body["token"], body["id"]


async def expired_token(node: Node) -> str:
    """Return an admin token whose expiry has passed, stored as the gateway would store it."""
    token, token_id, digest = new_token()
    past = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    r = await node.processor.post("/internal/v1/tokens", json={
        "id": token_id, "name": "old", "role": "admin", "secret_hash": digest.hex(),
        "expires_at": past})
    assert r.status_code == 201, r.text
    return token


async def recorded(node: Node, who: str) -> str:
    """Return a session `who` created and uploaded PLAINTEXT to (still recording)."""
    async with node.client() as c:
        r = await c.post("/v1/sessions", headers=node.auth(who), json={})
        assert r.status_code == 201, r.text
        sid: str = r.json()["id"]
        r = await c.patch(f"/v1/sessions/{sid}/upload", content=PLAINTEXT,
                          headers=node.auth(who) | UPLOAD | {"Upload-Offset": "0"})
        assert r.status_code == 200, r.text
    return sid


async def principals(node: Node) -> None:
    """Fill node.tokens: one token per role, and the ways a token can be wrong."""
    for role in ("recorder", "viewer", "auditor"):
        node.tokens[role], node.ids[role] = await make_token(node, role, name=role)
    revoked, revoked_id = await make_token(node, "admin", name="gone")
    async with node.client() as c:
        assert (await c.delete(f"/v1/tokens/{revoked_id}", headers=node.auth("admin"))
                ).status_code == 204
    node.tokens["revoked"] = revoked
    node.tokens["expired"] = await expired_token(node)
    parsed = parse_token(node.tokens["recorder"])
    assert parsed is not None
    node.tokens["wrong"] = f"lucid_{parsed[0]}_{'A' * 43}"  # a real id, not its secret
    node.tokens["unknown"] = new_token()[0]  # well-formed, never stored
    node.tokens["malformed"] = "lucid_not a token"


# -- the routes of the gateway -----------------------------------------------------------------


def gateway_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """Yield (method, path template) of every route the gateway serves (included routers too)."""
    def walk(routes: list[Any]) -> Iterator[tuple[str, str]]:
        for route in routes:
            if isinstance(route, APIRoute):
                yield from ((m, route.path) for m in sorted(route.methods))
            elif isinstance(route, Route):  # Starlette adds HEAD to a GET route
                yield from ((m, route.path) for m in sorted(route.methods or ()) if m != "HEAD")
            elif isinstance(route, Mount):
                assert route.path == DOCS_ASSETS, f"unexpected mount {route.path}"
            elif hasattr(route, "original_router"):
                yield from walk(route.original_router.routes)
            else:
                raise AssertionError(f"unknown kind of route {route!r}")
    return walk(app.routes)


def test_every_route_has_a_rule_and_every_rule_a_route(tmp_path: Path) -> None:
    app = api_app(ApiSettings(data_dir=tmp_path))
    keys = {access.rule_key(m, p) for m, p in gateway_routes(app)}
    missing = sorted(k for k in keys if k not in access.RULES and k not in access.PUBLIC)
    assert not missing, f"routes without a rule in sessions/api/access.py: {missing}"
    assert not set(access.RULES) & access.PUBLIC
    assert set(access.RULES) | access.PUBLIC <= keys, "rules for routes that do not exist"


def test_a_route_without_a_rule_is_admin_only() -> None:
    access.authorize(Role.ADMIN, "GET", "/v1/new-thing")
    for role in (Role.RECORDER, Role.VIEWER, Role.AUDITOR):
        with pytest.raises(Exception, match="may not call") as info:
            access.authorize(role, "GET", "/v1/new-thing")
        assert getattr(info.value, "code", None) == "forbidden"


def test_the_roles_are_the_issues() -> None:
    """Recorder: write-only; viewer: plaintext, no delete; auditor: never plaintext."""
    by_role = {role: {k for k, roles in access.RULES.items() if role in roles} for role in Role}
    assert by_role[Role.ADMIN] == set(access.RULES)
    for role in (Role.RECORDER, Role.VIEWER, Role.AUDITOR):
        assert not any(k.startswith("DELETE") for k in by_role[role]), role
        assert not any("/tokens" in k or "/keys/" in k for k in by_role[role]), role
    assert "GET /v1/sessions/{session_id}/replay" not in by_role[Role.AUDITOR]
    assert "GET /v1/sessions/{session_id}/replay" not in by_role[Role.RECORDER]
    assert "GET /v1/sessions" not in by_role[Role.RECORDER]
    assert "GET /v1/sessions/{session_id}/chunks/{index}" in by_role[Role.AUDITOR]


# -- the matrix ----------------------------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)


async def call_for(node: Node, method: str, template: str, who: str,
                   sessions: dict[str, str]) -> Call:
    """Return a request on the route as `who` would send it (fresh targets for deletions)."""
    sid = sessions["own"] if who == "recorder" else sessions["other"]
    if method == "DELETE" and "{session_id}" in template:
        sid = await recorded(node, "recorder" if who == "recorder" else "admin")
    tid = "f" * 16  # refused before any lookup, unless an admin revokes a real one
    if method == "DELETE" and "{token_id}" in template and who == "admin":
        tid = (await make_token(node, "viewer", name="doomed"))[1]
    path = template.replace("{session_id}", sid).replace("{index}", "0").replace(
        "{token_id}", tid)
    c = Call(method, path, params={"index": "0", "from": "0"})
    if path.startswith("/_tus"):
        c.path = path.removeprefix("/_tus")
        c.headers = {"Tus-Resumable": "1.0.0"}
        if method == "POST":
            c.headers["Upload-Defer-Length"] = "1"
    elif path == "/v1/tokens" and method == "POST":
        c.json = {"name": "matrix", "role": "viewer"}
    elif method in ("POST", "PUT", "PATCH"):
        c.json = {}
    return c


def expected(method: str, template: str, who: str) -> str:
    """Return what the rules say `who` gets: `ok`, `unauthorized`, `forbidden` or `not_found`."""
    key = access.rule_key(method, template)
    if key in access.PUBLIC or (template.startswith(DOCS_ASSETS)):
        return "ok"
    if who in ANONYMOUS:
        return "unauthorized"
    role = Role("recorder" if who == "recorder-other" else who)
    if role not in access.RULES[key]:
        return "forbidden"
    if who == "recorder-other" and "{session_id}" in template:
        return "not_found"
    return "ok"


_HEAD = {401: "unauthorized", 403: "forbidden", 404: "session_not_found"}


def outcome(resp: httpx.Response) -> str:
    if resp.request.method == "HEAD":  # no body: the status says it
        code = _HEAD.get(resp.status_code)
    elif resp.status_code >= 400 and resp.headers.get("content-type", "").startswith(
            "application/json"):
        code = resp.json().get("error")
    else:
        code = None
    if resp.status_code == 401 and code == "unauthorized":
        return "unauthorized"
    if resp.status_code == 403 and code == "forbidden":
        return "forbidden"
    if resp.status_code == 404 and code == "session_not_found":
        return "not_found"
    assert resp.status_code not in (401, 403, 429) and resp.status_code < 500, resp.text
    return "ok"


async def test_the_auth_matrix(node: Node) -> None:
    await principals(node)
    sessions = {"own": await recorded(node, "recorder"), "other": await recorded(node, "admin")}
    who_all = ["admin", "recorder", "viewer", "auditor", "recorder-other", *ANONYMOUS]
    routes = sorted(gateway_routes(node.gateways[0]), key=lambda r: r[0] == "DELETE")
    wrong: list[str] = []
    recorder_bodies: list[bytes] = []
    count = 0
    async with node.client() as client:
        for method, template in routes:
            for who in who_all:
                targets = dict(sessions)
                if who == "recorder-other":
                    targets["own"] = sessions["other"]
                as_who = "recorder" if who == "recorder-other" else who
                c = await call_for(node, method, template, as_who, targets)
                resp = await client.request(c.method, c.path, params=c.params, json=c.json,
                                            headers=node.auth(as_who) | c.headers)
                count += 1
                got, want = outcome(resp), expected(method, template, who)
                if got != want:
                    wrong.append(f"{method} {template} as {who}: {resp.status_code} "
                                 f"{resp.text[:120]} (rules: {want})")
                if as_who == "recorder":
                    recorder_bodies.append(resp.content)
        assert count >= 30 * len(who_all)
        print(f"auth matrix: {count // len(who_all)} routes x {len(who_all)} principals = {count}")
        assert not wrong, "\n".join(wrong)
        # A recorder cannot read: no answer to it carries plaintext, under any route.
        assert not any(b"TOP-SECRET" in body for body in recorder_bodies)
        # ...while a viewer can (the marker is really there to be found).
        replay = await client.get(f"/v1/sessions/{sessions['own']}/replay",
                                  headers=node.auth("viewer"))
        assert replay.status_code == 200 and replay.content == PLAINTEXT


async def test_a_recorder_owns_what_it_creates_and_nothing_else(node: Node) -> None:
    await principals(node)
    mine, theirs = await recorded(node, "recorder"), await recorded(node, "admin")
    async with node.client() as c:
        shown = await c.get(f"/v1/sessions/{mine}", headers=node.auth("admin"))
        assert shown.json()["owner"] == node.ids["recorder"]
        rec = node.auth("recorder")
        assert (await c.get(f"/v1/sessions/{mine}/upload", headers=rec)).json()["offset"] == len(
            PLAINTEXT)
        for path in ("upload", "checkpoint", "proof/consistency?from=0"):
            r = await c.get(f"/v1/sessions/{theirs}/{path}", headers=rec)
            assert r.status_code == 404 and r.json()["error"] == "session_not_found", path
        r = await c.patch(f"/v1/sessions/{theirs}/upload", content=b"x",
                          headers=rec | UPLOAD | {"Upload-Offset": str(len(PLAINTEXT))})
        assert r.status_code == 404  # cannot append to another's session either
        for method, path in (("GET", "/v1/sessions"), ("GET", f"/v1/sessions/{mine}"),
                             ("GET", f"/v1/sessions/{mine}/replay"),
                             ("GET", f"/v1/sessions/{mine}/chunks/0"),
                             ("DELETE", f"/v1/sessions/{mine}")):
            r = await c.request(method, path, headers=rec)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", path
        done = await c.post(f"/v1/sessions/{mine}/finalize", headers=rec)
        assert done.status_code == 200 and done.json()["state"] == "completed"
        assert (await c.get(f"/v1/sessions/{mine}/manifest", headers=rec)).status_code == 200


async def test_an_auditor_audits_without_plaintext(node: Node) -> None:
    await principals(node)
    sid = await recorded(node, "admin")
    async with node.client() as c:
        assert (await c.post(f"/v1/sessions/{sid}/finalize", headers=node.auth("admin"))
                ).status_code == 200
        aud = node.auth("auditor")
        for path in ("", "/manifest", "/checkpoint", "/proof/inclusion?index=0",
                     "/proof/consistency?from=1", "/chunks/0"):
            r = await c.get(f"/v1/sessions/{sid}{path}", headers=aud)
            assert r.status_code == 200, (path, r.text)
            assert b"TOP-SECRET" not in r.content
        assert (await c.post(f"/v1/sessions/{sid}/verify", headers=aud)).json()["ok"] is True
        r = await c.get(f"/v1/sessions/{sid}/replay", headers=aud)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"


# -- revocation, expiry, rate limit, logs ----------------------------------------------------


async def test_a_revoked_token_stops_within_the_cache_bound(tmp_path: Path) -> None:
    ttl = 1.0
    async for node in _node(tmp_path, gateways=2, token_cache_seconds=ttl):
        token, token_id = await make_token(node, "viewer")
        headers = {"Authorization": f"Bearer {token}"}
        async with node.client(0) as a, node.client(1) as b:
            assert (await b.get("/v1/sessions", headers=headers)).status_code == 200  # cached
            assert (await a.delete(f"/v1/tokens/{token_id}", headers=node.auth("admin"))
                    ).status_code == 204
            revoked_at = time.monotonic()
            r = await a.get("/v1/sessions", headers=headers)  # the revoking gateway: at once
            assert r.status_code == 401 and r.json()["detail"] == "the token was revoked"
            while (await b.get("/v1/sessions", headers=headers)).status_code == 200:
                assert time.monotonic() - revoked_at <= ttl + 0.5, "revoked token still works"
                await _pause(0.05)
            assert (await b.get("/v1/sessions", headers=headers)).status_code == 401


async def _pause(seconds: float) -> None:
    import anyio
    await anyio.sleep(seconds)


async def test_the_cache_keeps_answers_ttl_seconds_found_or_not() -> None:
    now = [0.0]
    lookups: list[str] = []
    token, token_id, digest = new_token()
    stored = StoredToken(id=token_id, name="n", role=Role.VIEWER, created_at="x",
                         secret_hash=digest.hex())
    known: dict[str, StoredToken] = {}

    async def lookup(tid: str) -> StoredToken | None:
        lookups.append(tid)
        return known.get(tid)

    verifier = TokenVerifier("b" * 43, lookup, ttl=10, clock=lambda: now[0])
    request = _conn(token)
    with pytest.raises(Unauthorized):
        await verifier.principal(request)  # not stored yet: a negative answer, cached
    known[token_id] = stored
    now[0] = 9.9
    with pytest.raises(Unauthorized):
        await verifier.principal(request)
    now[0] = 10.0
    assert (await verifier.principal(request)).token_id == token_id
    assert lookups == [token_id, token_id]
    cache: Bounded[int, int] = Bounded(size=2)
    for n in range(3):
        cache.set(n, n)
    assert cache.get(0) is None and cache.get(2) == 2  # bounded: the oldest goes


def _conn(token: str) -> Any:
    from starlette.requests import HTTPConnection
    return HTTPConnection({"type": "http", "headers": [
        (b"authorization", f"Bearer {token}".encode())]})


async def test_an_expired_token_is_refused(node: Node) -> None:
    token, _ = await make_token(node, "viewer", expires_in=60)
    headers = {"Authorization": f"Bearer {token}"}
    async with node.client() as c:
        assert (await c.get("/v1/sessions", headers=headers)).status_code == 200
        verifier: TokenVerifier = node.gateways[0].state.resources.verifier
        verifier._now = lambda: datetime.now(UTC) + timedelta(seconds=61)  # noqa: SLF001
        r = await c.get("/v1/sessions", headers=headers)
        assert r.status_code == 401 and r.json()["detail"] == "the token has expired"
        listed = (await c.get("/v1/tokens", headers=node.auth("admin"))).json()["items"]
        assert all("secret" not in k for t in listed for k in t)


async def test_the_rate_limit_is_per_token(tmp_path: Path) -> None:
    async for node in _node(tmp_path, rate_limit=0.5, rate_burst=3):
        async with node.client() as c:
            # the bootstrap admin spends its own bucket creating the viewer token
            token, _ = await make_token(node, "viewer")
            viewer = {"Authorization": f"Bearer {token}"}
            for _ in range(3):
                assert (await c.get("/v1/sessions", headers=viewer)).status_code == 200
            r = await c.get("/v1/sessions", headers=viewer)
            assert r.status_code == 429 and r.json()["error"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
            assert (await c.get("/v1/sessions", headers=node.auth("admin"))).status_code == 200


async def test_a_clock_behind_the_tokens_creation_refuses_an_expiring_token() -> None:
    """Token expiry does not act on a clock jump: a gateway whose clock reads before the
    token was made (booted in the past) cannot know it unexpired, so it refuses it;
    a token without an expiry is unaffected."""
    created = datetime(2026, 12, 1, 12, tzinfo=UTC)
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    tokens: dict[str, StoredToken] = {}
    presented = {}
    for name, expires in (("expiring", created + timedelta(days=30)), ("forever", None)):
        token, token_id, digest = new_token()
        tokens[token_id] = StoredToken(
            id=token_id, name=name, role=Role.VIEWER, created_at=created.strftime(stamp),
            expires_at=None if expires is None else expires.strftime(stamp),
            secret_hash=digest.hex())
        presented[name] = token

    async def lookup(tid: str) -> StoredToken | None:
        return tokens.get(tid)

    now = [created - timedelta(days=400)]  # booted with the clock of last year
    verifier = TokenVerifier("b" * 43, lookup, ttl=0, now=lambda: now[0])
    with pytest.raises(Unauthorized, match="clock reads before"):
        await verifier.principal(_conn(presented["expiring"]))
    assert (await verifier.principal(_conn(presented["forever"]))).role is Role.VIEWER
    now[0] = created + timedelta(days=1)  # NTP set the clock: the token is good again
    assert (await verifier.principal(_conn(presented["expiring"]))).role is Role.VIEWER


def test_an_unreadable_expiry_counts_as_expired() -> None:
    from sessions.api.auth import _expired
    now = datetime.now(UTC)
    assert _expired("2026-13-45T00:00:00Z", now)
    assert not _expired((now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), now)


def test_the_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited) as info:
        limiter.take("a")
    assert info.value.headers["Retry-After"] == "1"
    limiter.take("b")  # another token's bucket is full
    now[0] = 0.5  # one request's worth refilled
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")


async def test_requests_are_logged_with_the_token_id_never_the_token(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lucid.access")
    token, token_id = await make_token(node, "recorder")
    async with node.client() as c:
        await c.post("/v1/sessions", headers={"Authorization": f"Bearer {token}"}, json={})
        await c.get("/v1/sessions", headers={"Authorization": f"Bearer {token}"})
        await c.patch("/v1/sessions", headers={"Authorization": "Bearer nope",
                                               "Tus-Resumable": "1.0.0"})
    lines = [r.getMessage() for r in caplog.records if r.name == "lucid.access"]
    assert f"token={token_id} POST /v1/sessions 201" in lines
    assert f"token={token_id} GET /v1/sessions 403" in lines
    assert any(line.startswith("token=- ") for line in lines)
    text = caplog.text
    assert token not in text and node.tokens["admin"] not in text
    parsed = parse_token(token)
    assert parsed is not None and parsed[1] not in text
    assert hashlib.sha256(parsed[1].encode()).hexdigest() not in text
    assert secret_digest(parsed[1]).hex() not in text


async def test_internal_services_answer_only_health_and_ready_without_the_token(
        node: Node) -> None:
    processor = node.gateways[0].state.resources.processor  # noqa: F841 - the stack is up
    bare = httpx.AsyncClient(transport=node.processor._transport,  # noqa: SLF001
                             base_url="http://processor")
    async with bare:
        for path in ("/health", "/ready"):
            assert (await bare.get(path)).status_code == 200, path
        for path in ("/openapi.json", "/docs", "/redoc", "/metrics", "/internal/v1/node",
                     "/internal/v1/tokens", f"{DOCS_ASSETS}/swagger-ui.css", "/nowhere"):
            r = await bare.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
    for path in ("/openapi.json", "/docs", "/metrics"):
        assert (await node.processor.get(path)).status_code == 200, path


async def test_the_gateway_documents_roles_403_and_429(node: Node) -> None:
    async with node.client() as c:
        spec = (await c.get("/openapi.json")).json()  # public: the API is documented
        assert (await c.get("/docs")).status_code == 200
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=node.auth("admin"))).status_code == 200
    replay = spec["paths"]["/v1/sessions/{session_id}/replay"]["get"]
    assert "**Roles:** admin, viewer." in replay["description"]
    assert {"401", "403", "429"} <= set(replay["responses"])
    assert "403" not in spec["paths"]["/v1/node"]["get"]["responses"]
    create = spec["paths"]["/v1/tokens"]["post"]
    assert "**Roles:** admin." in create["description"]


def test_the_token_cli_parses_roles_and_durations() -> None:
    from sessions.client.cli import build_parser
    parser = build_parser()
    args = parser.parse_args(["token", "create", "--role", "recorder", "--name", "ws-17",
                              "--expires-in", "30d"])
    assert (args.role, args.name, args.expires_in) == ("recorder", "ws-17", 30 * 86400)
    assert parser.parse_args(["token", "create", "--role", "auditor", "--name", "a"]
                             ).expires_in is None
    for bad in (["--role", "root"], ["--role", "viewer", "--expires-in", "30x"],
                ["--role", "viewer", "--expires-in", "0d"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["token", "create", "--name", "n", *bad])
    assert parser.parse_args(["token", "revoke", "0123456789abcdef"]).id == "0123456789abcdef"


def test_the_token_format() -> None:
    token, token_id, digest = new_token()
    parsed = parse_token(token)
    assert parsed is not None and parsed[0] == token_id
    assert secret_digest(parsed[1]) == digest and len(digest) == 32
    assert len(parsed[1]) == 43  # 32 random bytes, url-safe base64
    assert new_token()[0] != token
    for bad in ("", "lucid_", f"lucid_{token_id}", f"lucid_{token_id}_", token + "x",
                token.replace("lucid_", "lucid-"), f"lucid_{token_id.upper()}_{parsed[1]}",
                token[:-1] + "!", "Bearer " + token):
        assert parse_token(bad) is None, bad
