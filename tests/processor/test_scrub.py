"""The background scrub finds chunk and metadata damage on its own, and can be turned off.

Real storage (SQLite, chunk files) and a real processor in one process through
httpx's ASGI transport, as in test_key_rotation; the scrub runs as the processor
runs it, on a short interval.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sessions.common.secrets import new_token, write_new_secret
from sessions.core import MasterKey, NoteSigner
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

MIB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def node(root: Path, **scrub: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Yield a processor app (over a real storage app) and a client of its internal API."""
    token = root / "service.token"
    write_new_secret(token, new_token())
    write_new_secret(root / "signing.key", NoteSigner.generate("lucid-scrub").key_text())
    write_new_secret(root / "master.key", MasterKey.generate().to_text())
    storage = storage_app(StorageSettings(mode="production", data_dir=root / "storage",
                                          service_token_file=token))
    settings = ProcessorSettings(
        mode="production", data_dir=root / "processor", service_token_file=token,
        master_key_file=root / "master.key", signing_key_file=root / "signing.key",
        storage_url="http://storage", chunk_size=MIB, **scrub)
    app = processor_app(settings, storage_transport=httpx.ASGITransport(app=storage))
    async with storage.router.lifespan_context(storage), app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://processor",
                              headers={"Authorization": f"Bearer {token.read_text().strip()}"},
                              timeout=30) as client:
        yield app, client


async def record(client: httpx.AsyncClient, data: bytes) -> str:
    sid: str = (await client.post("/internal/v1/sessions", json={})).json()["id"]
    r = await client.patch(f"/internal/v1/sessions/{sid}/upload", content=data,
                           headers={"Upload-Offset": "0",
                                    "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 200, r.text
    assert (await client.post(f"/internal/v1/sessions/{sid}/finalize")).status_code == 200
    return sid


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    found = re.findall(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


@pytest.mark.anyio
async def test_the_scrub_finds_damage_by_itself(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lucid.processor.scrub")
    async with node(tmp_path, scrub_interval=0.2, scrub_sample_percent=100,
                    scrub_max_bytes_per_second=0) as (_, client):
        altered = await record(client, bytes(range(256)) * 4 * 1024 * 2 + b"tail")
        misnamed = await record(client, b"x" * (MIB + 5))
        clean = await record(client, b"fine")
        chunk = next((tmp_path / "storage" / "storage" / "chunks").rglob(
            f"{altered}/0000000001.lcs"))
        blob = bytearray(chunk.read_bytes())
        blob[100] ^= 0x01
        chunk.write_bytes(bytes(blob))
        db = sqlite3.connect(tmp_path / "storage" / "storage" / "metadata.sqlite3",
                             isolation_level=None)
        db.execute("UPDATE chunks SET leaf_hash = randomblob(32) WHERE session_id = ? "
                   "AND idx = 0", (misnamed,))
        db.close()

        deadline = time.monotonic() + 30
        # a pass reports each session as it goes: wait for the clean one too
        while (await metric(client, "lucid_scrub_damaged_sessions") < 2
               or await metric(client, 'lucid_scrub_sessions_total{result="ok"}') < 1):
            assert time.monotonic() < deadline, (await client.get("/metrics")).text
            await asyncio.sleep(0.1)
        assert await metric(client, "lucid_scrub_bad_chunks_total") >= 1
        assert await metric(client, "lucid_scrub_metadata_findings_total") >= 1
        assert await metric(client, 'lucid_scrub_sessions_total{result="ok"}') >= 1
        assert await metric(client, "lucid_scrub_last_pass_timestamp_seconds") > 0

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"session {altered}" in logged and "(1, 'altered')" in logged
    assert f"session {misnamed}" in logged and "('leaf_hash', 0)" in logged
    assert f"session {clean}" not in logged


@pytest.mark.anyio
async def test_the_scrub_can_be_turned_off(tmp_path: Path) -> None:
    async with node(tmp_path, scrub_interval=0) as (app, client):
        assert app.state.resources.scrubber is None
        assert "lucid_scrub" not in (await client.get("/metrics")).text


@pytest.mark.anyio
async def test_a_pass_is_rate_limited_and_bounded(tmp_path: Path) -> None:
    async with node(tmp_path, scrub_interval=3600, scrub_sessions_per_pass=2,
                    scrub_sample_percent=100, scrub_max_bytes_per_second=4 * MIB) as (app, client):
        for n in range(3):
            await record(client, b"y" * (MIB + n))  # 2 chunks each
        scrubber = app.state.resources.scrubber
        started = time.monotonic()
        assert await scrubber.run_pass() == 2  # at most scrub_sessions_per_pass
        # 2 sessions x 2 chunks x 1 MiB at 4 MiB/s: at least a second of pauses.
        assert time.monotonic() - started >= 1.0
        assert await scrubber.run_pass() == 2  # the next pass goes on where this one stopped
        assert await metric(client, 'lucid_scrub_sessions_total{result="ok"}') == 4


@pytest.mark.anyio
async def test_a_finalize_landing_during_verify_is_not_damage(tmp_path: Path) -> None:
    """Verify reads the record, then the manifest; a finalize between the two once made
    the scrub report a clean session as damaged (state and root_hash findings)."""
    async with node(tmp_path, scrub_interval=3600) as (app, client):
        sid: str = (await client.post("/internal/v1/sessions", json={})).json()["id"]
        r = await client.patch(f"/internal/v1/sessions/{sid}/upload", content=b"fine" * 1000,
                               headers={"Upload-Offset": "0",
                                        "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 200, r.text
        engine = app.state.resources.engine
        storage = engine.storage
        read_manifest = storage.manifest_or_none
        landed: list[int] = []

        async def finalize_first(session_id: str) -> bytes | None:
            if not landed:  # the finalize lands after the record was read, once
                landed.append(1)
                await engine.finalize(session_id)
            return await read_manifest(session_id)

        storage.manifest_or_none = finalize_first
        report = await engine.verify(sid, 100)
        assert landed, "the finalize did not land between verify's reads"
        assert report.ok, report
        assert report.metadata_findings == [] and report.signature_ok is True
        assert (await storage.get_session(sid)).state.value == "completed"
