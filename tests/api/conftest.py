"""Gateway fixtures: the app through ASGITransport, the processor replaced by a MockTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sessions.api.config import Settings
from sessions.api.main import create_app
from tests.api.fakes import ADMIN_TOKEN, SERVICE_TOKEN, FakeProcessor


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "admin.token").write_text(ADMIN_TOKEN + "\n")
    (secrets / "service.token").write_text(SERVICE_TOKEN + "\n")
    return Settings(data_dir=tmp_path, max_upload_bytes=64 * 1024, max_json_bytes=2048,
                    processor_url="http://processor.test:8085")


@pytest.fixture
def fake() -> FakeProcessor:
    return FakeProcessor()


@pytest.fixture
async def app(settings: Settings, fake: FakeProcessor) -> AsyncIterator[FastAPI]:
    app = create_app(settings, processor_transport=fake)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def gateway(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sees what a real one would: app errors become 500 responses."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client

