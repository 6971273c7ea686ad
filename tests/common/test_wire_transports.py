"""The transport setting: wire (default) or httpx, each carrying real service hops (TLS: elsewhere).

The end-to-end test starts the three services as processes on loopback ports,
once per transport, and sends a session through both hops (gateway -> processor
-> storage): upload across chunk boundaries, finalize, replay, a range, verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app
from sessions.client import launcher
from sessions.client.launcher import SERVICES
from sessions.common._wire import WireTransport
from sessions.common.httpclient import service_transport
from sessions.common.secrets import ConfigError
from sessions.common.settings import Transport, load
from sessions.processor.config import Settings as ProcessorSettings

MIB = 1 << 20


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "variable"), [(ApiSettings, "LUCID_PROCESSOR_URL"),
                                                    (ProcessorSettings, "LUCID_STORAGE_URL")])
def test_a_service_url_may_be_http_or_https(
        monkeypatch: pytest.MonkeyPatch, settings: type[ApiSettings | ProcessorSettings],
        variable: str) -> None:
    monkeypatch.setenv(variable, "https://10.0.0.7:8085/")
    assert getattr(load(settings), variable.removeprefix("LUCID_").lower()) == \
        "https://10.0.0.7:8085"
    monkeypatch.setenv(variable, "ftp://10.0.0.7:8085/")
    with pytest.raises(ConfigError, match=variable):
        load(settings)
    monkeypatch.setenv(variable, "http://10.0.0.7:8085/")
    assert getattr(load(settings), variable.removeprefix("LUCID_").lower()) == \
        "http://10.0.0.7:8085"


def test_the_transport_setting_defaults_to_wire_and_names_a_bad_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUCID_HTTP_TRANSPORT", raising=False)
    assert load(ApiSettings).http_transport is Transport.WIRE
    monkeypatch.setenv("LUCID_HTTP_TRANSPORT", "httpx")
    assert load(ProcessorSettings).http_transport is Transport.HTTPX
    monkeypatch.setenv("LUCID_HTTP_TRANSPORT", "aiohttp")
    with pytest.raises(ConfigError, match="LUCID_HTTP_TRANSPORT"):
        load(ApiSettings)


def test_each_kind_builds_its_transport() -> None:
    assert isinstance(service_transport(Transport.WIRE, max_connections=4), WireTransport)
    assert isinstance(service_transport(Transport.HTTPX, max_connections=4),
                      httpx.AsyncHTTPTransport)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(("kind", "expected"), [(Transport.WIRE, WireTransport),
                                                (Transport.HTTPX, httpx.AsyncHTTPTransport)])
async def test_the_gateway_calls_the_processor_over_the_configured_transport(
        tmp_path: Path, kind: Transport, expected: type, anyio_backend: str) -> None:
    app = create_app(ApiSettings(data_dir=tmp_path, http_transport=kind))
    async with app.router.lifespan_context(app):
        assert isinstance(app.state.resources.processor._http._transport, expected)


# -- real hops, one cluster per transport ----------------------------------------------------


@pytest.fixture(params=[Transport.WIRE, Transport.HTTPX], ids=str)
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[httpx.Client]:
    node = launcher.Node.in_dir(tmp_path, base_env={
        "LUCID_CHUNK_SIZE": str(MIB), "LUCID_HTTP_TRANSPORT": str(request.param)})
    with node.running():
        token = (node.data_dir / "secrets" / "admin.token").read_text().strip()
        with httpx.Client(base_url=node.url("api") + "/v1", trust_env=False,
                          headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as client:
            yield client
    for name in SERVICES:
        assert "Traceback" not in node.log_tail(name, lines=100_000)


@pytest.mark.e2e
def test_a_session_crosses_both_hops(gateway: httpx.Client) -> None:
    data = bytes(range(251)) * (3 * MIB // 251) + b"tail"
    sid = gateway.post("/sessions", json={"labels": {}}).json()["id"]
    for offset in (0, 2 * MIB):
        piece = data[offset:offset + 2 * MIB]
        resp = gateway.patch(f"/sessions/{sid}/upload", content=piece, headers={
            "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)})
        assert resp.status_code == 200, resp.text
    session = gateway.post(f"/sessions/{sid}/finalize").json()
    assert (session["state"], session["offset"]) == ("completed", len(data))
    replay = gateway.get(f"/sessions/{sid}/replay")
    assert hashlib.sha256(replay.content).digest() == hashlib.sha256(data).digest()
    ranged = gateway.get(f"/sessions/{sid}/replay", headers={"Range": "bytes=1048570-1048589"})
    assert (ranged.status_code, ranged.content) == (206, data[1048570:1048590])
    assert ranged.headers["content-length"] == "20"
    report = gateway.post(f"/sessions/{sid}/verify").json()
    assert report["ok"] and report["checked"] == session["chunk_count"] >= 3
