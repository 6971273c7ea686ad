"""The storage app over HTTP: auth, ids, session records, state, finalize, delete, health."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessions.common.ids import new_session_id

pytestmark = pytest.mark.anyio
API = "/internal/v1"
ErrorBody = Callable[[httpx.Response, int, str], dict[str, Any]]
Body = Callable[..., dict[str, Any]]


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(f"{API}/sessions", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_only_health_and_ready_need_no_token(app: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://storage") as anon:
        assert (await anon.get("/health")).json() == {"status": "ok", "service": "storage"}
        assert (await anon.get("/ready")).json() == {"status": "ready", "service": "storage"}
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc", "/nowhere"):
            refused = await anon.get(path)  # only /health and /ready are open
            assert refused.status_code == 401, path
            assert refused.json()["error"] == "unauthorized"
    assert app.openapi()["info"]["title"] == "Lucid session storage (internal)"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-" + "x" * 40},
                                     {"Authorization": "Basic Zm9vOmJhcg=="},
                                     {"Authorization": "Bearer "}])
@pytest.mark.parametrize("method,path", [("GET", "/sessions"), ("GET", "/stats"),
                                         ("POST", "/sessions"), ("GET", "/nowhere"),
                                         ("DELETE", "/sessions/" + "0" * 26)])
async def test_token_is_required(app: FastAPI, error_body: ErrorBody, headers: dict[str, str],
                                 method: str, path: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://storage", headers=headers) as anon:
        resp = await anon.request(method, API + path, content=b"{not json")
    error_body(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"] == "Bearer"


async def test_create_and_get(client: httpx.AsyncClient, session_body: Body) -> None:
    body = session_body(labels={"host": "web-1", "team": "ops"})
    created = await create(client, body)
    assert set(created) == {"id", "state", "labels", "created_at", "updated_at",
                            "retention_days", "offset", "chunk_count", "sealed_bytes",
                            "chunk_size", "zstd_level", "format_version", "root_hash",
                            "wrapped_key", "upload_length", "owner", "legal_hold",
                            "expires_at", "integrity"}
    assert created["integrity"] == "unchecked"  # storage keeps records; the processor checks
    assert created["state"] == "recording" and created["wrapped_key"] == body["wrapped_key"]
    assert created["root_hash"] is None and created["offset"] == 0
    got = await client.get(f"{API}/sessions/{body['id']}")
    assert got.json() == created


async def test_create_conflict(client: httpx.AsyncClient, session_body: Body,
                               error_body: ErrorBody) -> None:
    body = session_body()
    await create(client, body)
    error_body(await client.post(f"{API}/sessions", json=body), 409, "conflict")


@pytest.mark.parametrize("override", [
    {"id": "not-an-id"}, {"labels": {"Bad Key": "v"}}, {"wrapped_key": {"key_id": "k",
                                                                         "blob": "%%%"}},
    {"chunk_size": 0}, {"retention_days": 0}, {"labels": {f"k{i}": "v" for i in range(33)}},
    # past int64 once reached SQLite as an OverflowError (a 500); negative is documented now
    {"upload_length": 1 << 70}, {"upload_length": -1}, {"upload_length": False},
])
async def test_create_validates(client: httpx.AsyncClient, session_body: Body,
                                error_body: ErrorBody, override: dict[str, Any]) -> None:
    resp = await client.post(f"{API}/sessions", json=session_body(**override))
    code = "invalid_id" if "id" in override else "invalid_parameter"
    error_body(resp, 400 if code == "invalid_id" else 422, code)


async def test_malformed_and_unknown_ids(client: httpx.AsyncClient,
                                         error_body: ErrorBody) -> None:
    for bad in ("abc", "0" * 25 + "!", "." * 26, "8" + "0" * 25):
        error_body(await client.get(f"{API}/sessions/{bad}"), 400, "invalid_id")
    for unrouted in ("..%2F..%2Fetc", "0" * 25 + "%2F", new_session_id() + "/"):
        error_body(await client.get(f"{API}/sessions/{unrouted}"), 404, "not_found")
    unknown = new_session_id()
    error_body(await client.get(f"{API}/sessions/{unknown}"), 404, "session_not_found")
    error_body(await client.delete(f"{API}/sessions/{unknown}"), 404, "session_not_found")
    error_body(await client.get(f"{API}/sessions/{unknown}/manifest"), 404,
               "session_not_found")


async def test_list_filters_and_pages(client: httpx.AsyncClient, session_body: Body,
                                      error_body: ErrorBody) -> None:
    ids = [(await create(client, session_body(labels={"env": "prod" if i % 2 else "dev",
                                                       "n": str(i)})))["id"]
           for i in range(5)]
    page = (await client.get(f"{API}/sessions", params={"limit": 2})).json()
    assert [s["id"] for s in page["items"]] == ids[::-1][:2]
    page2 = (await client.get(f"{API}/sessions",
                              params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [s["id"] for s in page2["items"]] == ids[::-1][2:4]
    prod = (await client.get(f"{API}/sessions", params={"label": "env:prod"})).json()
    assert [s["id"] for s in prod["items"]] == [ids[3], ids[1]]
    assert prod["next_cursor"] is None
    both = await client.get(f"{API}/sessions", params=[("label", "env:prod"), ("label", "n:1")])
    assert [s["id"] for s in both.json()["items"]] == [ids[1]]
    done = await client.get(f"{API}/sessions", params={"state": "completed"})
    assert done.json() == {"items": [], "next_cursor": None}
    error_body(await client.get(f"{API}/sessions", params={"label": "nocolon"}), 422,
               "invalid_parameter")
    error_body(await client.get(f"{API}/sessions", params={"limit": 501}), 422,
               "invalid_parameter")
    error_body(await client.get(f"{API}/sessions", params={"state": "bogus"}), 422,
               "invalid_parameter")
    error_body(await client.get(f"{API}/sessions", params={"cursor": "zz"}), 400, "invalid_id")


async def test_state_changes_are_compare_and_set(client: httpx.AsyncClient,
                                                 session_body: Body,
                                                 error_body: ErrorBody) -> None:
    sid = (await create(client, session_body()))["id"]
    url = f"{API}/sessions/{sid}/state"
    resp = await client.post(url, json={"to": "finalizing", "from": ["recording"]})
    assert resp.status_code == 200 and resp.json()["state"] == "finalizing"
    body = error_body(await client.post(url, json={"to": "finalizing", "from": ["recording"]}),
                      409, "invalid_state")
    assert body["state"] == "finalizing"
    error_body(await client.post(url, json={"to": "recording"}), 409, "invalid_state")
    error_body(await client.post(url, json={"to": "deleted"}), 400, "bad_request")
    error_body(await client.post(url, json={"to": "nope"}), 422, "invalid_parameter")


async def test_finalize_and_manifest(client: httpx.AsyncClient, session_body: Body,
                                     error_body: ErrorBody) -> None:
    sid = (await create(client, session_body()))["id"]
    final = {"root_hash": "ab" * 32, "checkpoint": "origin\n0\nhash\n", "manifest": '{"v":1}'}
    error_body(await client.post(f"{API}/sessions/{sid}/finalize", json=final), 409,
               "invalid_state")
    # none stored yet: 409 before completion (as the processor answers), not a 404
    error_body(await client.get(f"{API}/sessions/{sid}/manifest"), 409, "invalid_state")
    await client.post(f"{API}/sessions/{sid}/state", json={"to": "finalizing"})
    done = await client.post(f"{API}/sessions/{sid}/finalize", json=final)
    assert done.status_code == 200
    assert done.json()["state"] == "completed" and done.json()["root_hash"] == "ab" * 32
    again = await client.post(f"{API}/sessions/{sid}/finalize", json=final)
    assert again.json() == done.json()
    manifest = await client.get(f"{API}/sessions/{sid}/manifest")
    assert manifest.content == b'{"v":1}'
    assert manifest.headers["content-type"] == "application/json"
    bad = dict(final, root_hash="zz")
    error_body(await client.post(f"{API}/sessions/{sid}/finalize", json=bad), 422,
               "invalid_parameter")
    # deleted: the manifest goes with the session (schemathesis ST301, use after free)
    assert (await client.delete(f"{API}/sessions/{sid}")).status_code == 204
    error_body(await client.get(f"{API}/sessions/{sid}/manifest"), 409, "invalid_state")


async def test_delete_is_idempotent(client: httpx.AsyncClient, session_body: Body) -> None:
    sid = (await create(client, session_body()))["id"]
    for _ in range(2):
        resp = await client.delete(f"{API}/sessions/{sid}")
        assert resp.status_code == 204 and resp.content == b""
    got = (await client.get(f"{API}/sessions/{sid}")).json()
    assert got["state"] == "deleted" and got["wrapped_key"] is None


async def test_a_deleted_sessions_data_is_gone(client: httpx.AsyncClient, session_body: Body,
                                               error_body: ErrorBody) -> None:
    """Chunks, leaves, checkpoint and manifest of a deleted session: 409, never an empty 200."""
    sid = (await create(client, session_body(upload_length=12.0)))["id"]
    assert (await client.get(f"{API}/sessions/{sid}")).json()["upload_length"] == 12
    cp = await client.put(f"{API}/sessions/{sid}/checkpoint", json={"checkpoint": "origin\n0\n"})
    assert cp.status_code == 204, cp.text
    assert (await client.get(f"{API}/sessions/{sid}/chunks")).json() == {"items": []}
    assert (await client.delete(f"{API}/sessions/{sid}")).status_code == 204
    for path in ("chunks", "leaves", "checkpoint", "manifest"):
        error_body(await client.get(f"{API}/sessions/{sid}/{path}"), 409, "invalid_state")


async def test_stats_and_metrics(client: httpx.AsyncClient, session_body: Body) -> None:
    await create(client, session_body())
    gone = (await create(client, session_body()))["id"]
    await client.delete(f"{API}/sessions/{gone}")
    stats = (await client.get(f"{API}/stats")).json()
    assert stats == {"sessions_by_state": {"recording": 1, "finalizing": 0, "completed": 0,
                                           "failed": 0, "deleted": 1}}
    text = (await client.get("/metrics")).text
    assert 'lucid_sessions{service="storage",state="recording"} 1.0' in text
    assert 'lucid_sessions{service="storage",state="deleted"} 1.0' in text


async def test_unexpected_errors_are_opaque(app: FastAPI, error_body: ErrorBody,
                                            service_token: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(session_id: str) -> None:
        raise RuntimeError("/secret/path/metadata.sqlite3 exploded")

    monkeypatch.setattr(app.state.resources.metastore, "get_session", boom)
    # Starlette re-raises after answering so the server can log it; a server would not crash.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://storage",
                                 headers={"Authorization": f"Bearer {service_token}"}) as c:
        resp = await c.get(f"{API}/sessions/{new_session_id()}")
    body = error_body(resp, 500, "internal_error")
    assert "secret" not in resp.text and set(body) == {"error", "detail"}


async def test_not_ready_when_the_database_is_closed(app: FastAPI, client: httpx.AsyncClient,
                                                     error_body: ErrorBody) -> None:
    await app.state.resources.metastore.close()
    error_body(await client.get("/ready"), 503, "not_ready")
    error_body(await client.get(f"{API}/stats"), 503, "storage_unavailable")
