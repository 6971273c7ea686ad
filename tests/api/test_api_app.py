"""The gateway app as a whole: settings, tokens, readiness, OpenAPI, a vanishing client."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sessions.api.config import Settings
from sessions.api.main import create_app
from sessions.common.secrets import ConfigError
from sessions.common.settings import Mode
from tests.api.fakes import SESSION_ID, FakeProcessor, auth

pytestmark = pytest.mark.anyio


async def test_local_mode_generates_the_admin_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings, processor_transport=FakeProcessor())
    async with app.router.lifespan_context(app):
        pass
    token_file = tmp_path / "secrets" / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert settings.admin_token() == token_file.read_text().strip()
    assert len(settings.admin_token()) >= 32


async def test_production_needs_an_admin_token_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mode=Mode.PRODUCTION)
    with pytest.raises(ConfigError, match="LUCID_ADMIN_TOKEN_FILE"):
        settings.admin_token()


def test_placeholder_admin_token_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("changeme\n")
    with pytest.raises(ConfigError, match="admin token"):
        Settings(data_dir=tmp_path, admin_token_file=tmp_path / "token").admin_token()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_API_PORT", "9000")
    monkeypatch.setenv("LUCID_PROCESSOR_URL", "http://processor:8085/")
    settings = Settings()
    assert settings.port == 9000
    assert settings.processor_url == "http://processor:8085"
    assert settings.max_upload_bytes == 8 * 1024**3
    assert settings.max_json_bytes == 64 * 1024


async def test_ready_follows_the_processor(gateway: httpx.AsyncClient,
                                           fake: FakeProcessor) -> None:
    fake.reply("GET", "/ready", body={"status": "ready"})
    assert (await gateway.get("/ready")).status_code == 200
    fake.reply("GET", "/ready", 503, {"error": "not_ready", "detail": "storage down"})
    resp = await gateway.get("/ready")
    assert resp.status_code == 503
    assert resp.json()["error"] == "not_ready"

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)
    fake.on("GET", "/ready", refuse)
    assert (await gateway.get("/ready")).status_code == 503


async def test_openapi_documents_the_contract(gateway: httpx.AsyncClient) -> None:
    doc = (await gateway.get("/openapi.json")).json()
    assert doc["info"]["title"] == "Lucid Sessions API"
    assert doc["info"]["version"]
    paths = doc["paths"]
    for path in ("/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/upload",
                 "/v1/sessions/{session_id}/replay", "/v1/sessions/{session_id}/chunks/{index}",
                 "/v1/sessions/{session_id}/proof/inclusion", "/v1/node"):
        assert path in paths
    upload = paths["/v1/sessions/{session_id}/upload"]
    assert set(upload) >= {"head", "get", "patch"}
    assert "multiples of `chunk_size`" in upload["patch"]["description"]
    assert "security" in paths["/v1/sessions"]["get"]
    assert "security" not in paths["/v1/node"]["get"]
    create = doc["components"]["schemas"]["CreateSession"]
    assert create["additionalProperties"] is False
    assert "wrapped_key" not in doc["components"]["schemas"]["Session"]["properties"]


async def test_a_client_vanishing_mid_upload_aborts_the_upstream(app: FastAPI,
                                                                 fake: FakeProcessor) -> None:
    seen: list[BaseException] = []
    original = fake.handle_async_request

    async def recording(request: httpx.Request) -> httpx.Response:
        try:
            return await original(request)
        except BaseException as exc:
            seen.append(exc)
            raise

    fake.handle_async_request = recording  # type: ignore[method-assign]
    messages = iter([{"type": "http.request", "body": b"x" * 100, "more_body": True},
                     {"type": "http.disconnect"}])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in auth(**{
        "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
        "Content-Length": "1000"}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "PATCH", "scheme": "http", "path": f"/v1/sessions/{SESSION_ID}/upload",
             "raw_path": b"", "query_string": b"", "root_path": "", "headers": headers,
             "server": ("gateway.test", 80), "client": ("127.0.0.1", 5000), "state": {}}
    await app(scope, receive, send)
    assert seen, "the upstream request should have failed with the client"
    assert sent[0]["status"] == 400  # truncated_body; nobody is left to read it
