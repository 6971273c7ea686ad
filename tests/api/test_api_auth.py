"""Client authentication: every /v1 route but GET /v1/node needs the admin bearer token."""

from __future__ import annotations

import hmac

import httpx
import pytest

import sessions.common.auth
from sessions.contract.models import KeyRotation
from tests.api.fakes import ADMIN_TOKEN, SERVICE_TOKEN, SESSION_ID, FakeProcessor, auth, error_of

pytestmark = pytest.mark.anyio

PROTECTED = [
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions"),
    ("GET", f"/v1/sessions/{SESSION_ID}"),
    ("DELETE", f"/v1/sessions/{SESSION_ID}"),
    ("POST", f"/v1/sessions/{SESSION_ID}/finalize"),
    ("GET", f"/v1/sessions/{SESSION_ID}/manifest"),
    ("GET", f"/v1/sessions/{SESSION_ID}/checkpoint"),
    ("GET", f"/v1/sessions/{SESSION_ID}/proof/inclusion?index=0"),
    ("GET", f"/v1/sessions/{SESSION_ID}/proof/consistency?from=1&to=2"),
    ("POST", f"/v1/sessions/{SESSION_ID}/verify"),
    ("GET", f"/v1/sessions/{SESSION_ID}/upload"),
    ("PATCH", f"/v1/sessions/{SESSION_ID}/upload"),
    ("GET", f"/v1/sessions/{SESSION_ID}/replay"),
    ("GET", f"/v1/sessions/{SESSION_ID}/chunks/0"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}",
                                    f"Bearer {SERVICE_TOKEN}", "Bearer "],
                         ids=["missing", "wrong", "basic", "service-token", "empty"])
async def test_protected_routes_need_the_admin_token(gateway: httpx.AsyncClient,
                                                     fake: FakeProcessor, method: str, path: str,
                                                     header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = await gateway.request(method, path, headers=headers)
    assert resp.status_code == 401
    assert error_of(resp) == "unauthorized"
    assert resp.headers["www-authenticate"] == "Bearer"
    assert fake.requests == []


async def test_head_upload_needs_the_token(gateway: httpx.AsyncClient) -> None:
    resp = await gateway.head(f"/v1/sessions/{SESSION_ID}/upload")
    assert resp.status_code == 401


async def test_auth_comes_before_id_validation(gateway: httpx.AsyncClient) -> None:
    resp = await gateway.get("/v1/sessions/not-an-id")
    assert resp.status_code == 401


async def test_tokens_are_compared_in_constant_time(gateway: httpx.AsyncClient,
                                                    fake: FakeProcessor,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sessions.common.auth.hmac, "compare_digest", spy)
    fake.reply("GET", "/internal/v1/sessions", body={"items": [], "next_cursor": None})
    assert (await gateway.get("/v1/sessions", headers={"Authorization": "Bearer nope"})
            ).status_code == 401
    assert (await gateway.get("/v1/sessions", headers=auth())).status_code == 200
    assert calls == [(b"nope", ADMIN_TOKEN.encode()), (ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode())]


async def test_node_needs_no_token(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    node = {"key_name": "lucid-test", "verifier_key": "lucid-test+01234567+AAAA",
            "origin_prefix": "lucid-test/sessions/", "chunk_size": 1048576,
            "audit_origin": "lucid-test/audit", "key_history": []}
    fake.reply("GET", "/internal/v1/node", body=node)
    resp = await gateway.get("/v1/node")
    assert resp.status_code == 200
    assert resp.json() == node


async def test_the_processor_gets_the_service_token(gateway: httpx.AsyncClient,
                                                    fake: FakeProcessor) -> None:
    fake.reply("GET", "/internal/v1/node", body={"key_name": "n", "verifier_key": "k",
                                                  "origin_prefix": "n/sessions/"})
    await gateway.get("/v1/node", headers=auth())
    assert fake.last.headers["authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert ADMIN_TOKEN not in str(fake.last.headers)


async def test_health_needs_no_token(gateway: httpx.AsyncClient) -> None:
    resp = await gateway.get("/health")
    assert resp.json() == {"status": "ok", "service": "api"}


async def test_key_rotation_needs_the_admin_token_and_passes_the_report_through(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    report = KeyRotation(master_key_id="0123456789abcdef", rotated=3, already_current=1,
                         erased=0, period_wrapped=0, unknown_key_ids=[],
                         unreadable_session_ids=[]).model_dump()
    fake.reply("POST", "/internal/v1/keys/rotate", body=report)
    refused = await gateway.post("/v1/keys/rotate")
    assert refused.status_code == 401 and error_of(refused) == "unauthorized"
    assert fake.requests == []  # refused before anything reached the processor
    resp = await gateway.post("/v1/keys/rotate", headers=auth())
    assert resp.status_code == 200 and resp.json() == report
