"""The gateway's tus layer in one process: header rules, dispatch, discovery and CORS.

The processor is the FakeProcessor; the protocol against the real services is
tests/e2e/test_tus.py, the stock clients tests/e2e/test_tus_clients.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import pytest
from starlette.datastructures import Headers

from sessions.api import tus
from sessions.api.config import Settings
from sessions.api.main import create_app
from sessions.common import checksums
from sessions.common.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from sessions.common.secrets import ConfigError
from sessions.common.settings import load
from tests.api.fakes import SESSION_ID, FakeProcessor, auth, error_of, session_json

pytestmark = pytest.mark.anyio

ORIGIN = "https://recorder.example.com"
NODE = {"key_name": "n", "verifier_key": "n+01234567+AAAA", "origin_prefix": "n/sessions/",
        "chunk_size": 4096}
UPLOAD = f"/v1/sessions/{SESSION_ID}/upload"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
async def cors_gateway(settings: Settings, fake: FakeProcessor
                       ) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with CORS on for ORIGIN."""
    app = create_app(settings.model_copy(update={"cors_origins": ORIGIN}),
                     processor_transport=fake)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            yield client


# -- header rules ---------------------------------------------------------------------------------

def test_uppy_default_keys_map_to_labels() -> None:
    header = ",".join(f"{k} {b64(v)}" for k, v in {
        "relativePath": "null", "name": "a.rec", "type": "video/x", "filetype": "video/x",
        "filename": "a.rec"}.items())
    assert tus.metadata_labels(header + ",flag") == {
        "relative_path": "null", "name": "a.rec", "type": "video/x", "filetype": "video/x",
        "filename": "a.rec", "flag": ""}


@pytest.mark.parametrize(("key", "label"), [
    ("relativePath", "relative_path"), ("fileName", "file_name"), ("HTTPHost", "httphost"),
    ("user", "user"), ("a.b-c_d", "a.b-c_d"), ("x1Y", "x1_y")])
def test_label_key_keeps_label_keys_and_snake_cases_the_rest(key: str, label: str) -> None:
    assert tus.label_key(key) == label


@pytest.mark.parametrize("key", ["_hidden", "a" * 65, "na:me", "é", ".dot"])
def test_label_key_refuses_what_no_label_can_be(key: str) -> None:
    with pytest.raises(BadRequest):
        tus.label_key(key)


def test_mapped_keys_that_collide_are_refused() -> None:
    with pytest.raises(BadRequest, match="repeated"):
        tus.metadata_labels(f"fileName {b64('a')},file_name {b64('b')}")


def test_more_than_32_pairs_are_refused() -> None:
    with pytest.raises(BadRequest, match="32"):
        tus.metadata_labels(",".join(f"k{i} {b64('v')}" for i in range(33)))


def test_metadata_round_trips_through_the_header() -> None:
    labels = {"name": "désk.rec", "flag": "", "user": "alice"}
    assert tus.metadata_labels(tus.metadata_header(labels)) == labels
    assert tus.metadata_header({}) is None


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Upload-Length": "0"}, 0), ({"Upload-Length": "100"}, 100),
    ({"Upload-Defer-Length": "1"}, None)])
def test_creation_length(headers: dict[str, str], expected: int | None) -> None:
    assert tus.creation_length(Headers(headers), max_size=100) == expected


def test_creation_length_past_the_max_size_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        tus.creation_length(Headers({"Upload-Length": "101"}), max_size=100)


@pytest.mark.parametrize("value", ["sha256", "SHA1 AAAA", "crc32 AAAAAA==", "sha1 " + "A" * 40])
def test_a_tus_patch_refuses_an_unknown_or_malformed_checksum(value: str) -> None:
    good = {"Content-Type": tus.OFFSET_STREAM, "Content-Length": "10"}
    with pytest.raises(BadRequest):
        tus.patch_headers(Headers({**good, "Upload-Checksum": value}), room=10, offset="0")


def test_the_gateway_advertises_every_checksum_algorithm() -> None:
    advertised = tus.discovery_headers(max_size=1, chunk_size=None)["Tus-Checksum-Algorithm"]
    assert advertised.split(",") == list(checksums.ALGORITHMS)


def test_patch_headers_need_the_offset_stream_type_and_fit_the_room() -> None:
    good = {"Content-Type": tus.OFFSET_STREAM, "Content-Length": "10"}
    assert tus.patch_headers(Headers(good), room=10, offset="5")["Upload-Offset"] == "5"
    with pytest.raises(UnsupportedMediaType):
        tus.patch_headers(Headers({**good, "Content-Type": "application/octet-stream"}),
                          room=10, offset="0")
    with pytest.raises(PayloadTooLarge):
        tus.patch_headers(Headers(good), room=9, offset="0")
    with pytest.raises(BadRequest):
        tus.patch_headers(Headers(good), room=10, offset=None)


def test_expires_is_an_imf_fixdate_after_the_idle_deadline() -> None:
    last = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = tus.expires(last, 3600)
    assert value == "Fri, 02 Jan 2026 04:04:05 GMT"
    assert parsedate_to_datetime(value) == last.replace(hour=4)
    assert tus.expires(last, 0) is None


# -- dispatch -------------------------------------------------------------------------------------

async def test_a_wrong_version_is_412_and_reaches_nothing(gateway: httpx.AsyncClient,
                                                          fake: FakeProcessor) -> None:
    for method, path in (("POST", "/v1/sessions"), ("PATCH", UPLOAD), ("GET", "/v1/sessions")):
        resp = await gateway.request(method, path, headers=auth(**{"Tus-Resumable": "0.2.2"}))
        assert resp.status_code == 412, path
        assert resp.headers["tus-version"] == "1.0.0"
        assert error_of(resp) == "tus_version_unsupported"
    assert fake.requests == []


async def test_the_hidden_tus_routes_cannot_be_reached_directly(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    resp = await gateway.post(f"{tus.TUS_PREFIX}/v1/sessions",
                              headers=auth(**{"Upload-Length": "5"}))
    assert resp.status_code == 404 and error_of(resp) == "not_found"
    assert fake.requests == []


async def test_an_empty_creation_body_of_any_type_is_plain_creation(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("POST", "/internal/v1/sessions", 201, session_json())
    resp = await gateway.post("/v1/sessions", content=b"", headers=auth(**{
        "Tus-Resumable": "1.0.0", "Upload-Length": "5",
        "Content-Type": "application/x-www-form-urlencoded"}))
    assert resp.status_code == 201 and "upload-offset" not in resp.headers
    assert [r.method for r in fake.requests] == ["POST"]


async def test_a_tus_request_without_a_token_is_401_and_still_tagged(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    resp = await gateway.head(UPLOAD, headers={"Tus-Resumable": "1.0.0"})
    assert resp.status_code == 401 and resp.headers["tus-resumable"] == "1.0.0"
    assert fake.requests == []


async def test_a_request_without_tus_resumable_keeps_the_json_api(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("POST", "/internal/v1/sessions", 201, session_json())
    resp = await gateway.post("/v1/sessions", headers=auth(**{"Upload-Length": "5"}))
    assert resp.status_code == 201 and resp.json()["id"] == SESSION_ID
    assert "location" not in resp.headers and "tus-resumable" not in resp.headers


async def test_head_completes_a_finalize_that_was_cut_off(gateway: httpx.AsyncClient,
                                                          fake: FakeProcessor) -> None:
    fake.reply("GET", f"/internal/v1/sessions/{SESSION_ID}", 200,
               session_json(offset=5, upload_length=5))
    fake.reply("POST", f"/internal/v1/sessions/{SESSION_ID}/finalize", 200,
               session_json(offset=5, upload_length=5, state="completed"))
    resp = await gateway.head(UPLOAD, headers=auth(**{"Tus-Resumable": "1.0.0"}))
    assert resp.status_code == 200 and resp.headers["upload-length"] == "5"
    assert fake.last.url.path.endswith("/finalize")
    assert "upload-expires" not in resp.headers  # a completed upload no longer expires


async def test_head_of_a_session_finalized_without_a_length_gives_its_offset_as_length(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("GET", f"/internal/v1/sessions/{SESSION_ID}", 200,
               session_json(offset=9, state="completed"))
    resp = await gateway.head(UPLOAD, headers=auth(**{"Tus-Resumable": "1.0.0"}))
    assert resp.status_code == 200 and resp.headers["upload-length"] == "9"
    assert "upload-defer-length" not in resp.headers
    assert [r.method for r in fake.requests] == ["GET"]


async def test_creation_with_upload_answers_201_even_if_the_body_fails(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("POST", "/internal/v1/sessions", 201, session_json())
    fake.reply("PATCH", f"/internal/v1/sessions/{SESSION_ID}/upload", 460,
               {"error": "checksum_mismatch", "detail": "x"})
    fake.reply("GET", f"/internal/v1/sessions/{SESSION_ID}", 200, session_json())
    resp = await gateway.post("/v1/sessions", content=b"hello", headers=auth(**{
        "Tus-Resumable": "1.0.0", "Upload-Length": "5", "Content-Type": tus.OFFSET_STREAM}))
    assert resp.status_code == 201 and resp.headers["upload-offset"] == "0"
    assert resp.headers["location"] == UPLOAD


# -- discovery and CORS ---------------------------------------------------------------------------

async def test_options_discovery_says_the_chunk_size(gateway: httpx.AsyncClient,
                                                     fake: FakeProcessor) -> None:
    fake.reply("GET", "/internal/v1/node", 200, NODE)
    resp = await gateway.options("/v1/sessions")
    assert resp.status_code == 204 and resp.headers["lucid-chunk-size"] == "4096"
    assert resp.headers["tus-extension"] == ",".join(tus.EXTENSIONS)


async def test_options_discovery_answers_while_the_processor_is_away(
        gateway: httpx.AsyncClient) -> None:
    resp = await gateway.options(UPLOAD)  # the fake answers 404 to everything
    assert resp.status_code == 204 and resp.headers["tus-version"] == "1.0.0"
    assert "lucid-chunk-size" not in resp.headers


async def test_cors_is_off_by_default(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("GET", "/internal/v1/node", 200, NODE)
    resp = await gateway.options("/v1/sessions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in resp.headers


async def test_cors_preflight_allows_the_tus_headers_for_a_configured_origin(
        cors_gateway: httpx.AsyncClient) -> None:
    resp = await cors_gateway.options(UPLOAD, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization,tus-resumable,upload-offset,"
                                          "upload-checksum,content-type,upload-length"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert "PATCH" in resp.headers["access-control-allow-methods"]
    allowed = resp.headers["access-control-allow-headers"].lower()
    for name in ("tus-resumable", "upload-offset", "upload-metadata", "upload-checksum",
                 "upload-defer-length", "authorization"):
        assert name in allowed


async def test_cors_refuses_another_origin(cors_gateway: httpx.AsyncClient) -> None:
    resp = await cors_gateway.options(UPLOAD, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"})
    assert resp.status_code == 400 and "access-control-allow-origin" not in resp.headers


async def test_cors_exposes_the_tus_response_headers(cors_gateway: httpx.AsyncClient,
                                                     fake: FakeProcessor) -> None:
    fake.reply("POST", "/internal/v1/sessions", 201, session_json())
    resp = await cors_gateway.post("/v1/sessions", headers=auth(**{
        "Origin": ORIGIN, "Tus-Resumable": "1.0.0", "Upload-Defer-Length": "1"}))
    assert resp.status_code == 201
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"location", "upload-offset", "upload-length", "upload-expires", "tus-resumable",
            "tus-version", "tus-extension", "tus-max-size", "lucid-chunk-size"} <= exposed


async def test_options_without_an_origin_is_discovery_even_with_cors_on(
        cors_gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("GET", "/internal/v1/node", 200, NODE)
    resp = await cors_gateway.options("/v1/sessions")
    assert resp.status_code == 204 and resp.headers["tus-version"] == "1.0.0"


def test_a_bad_cors_origin_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_CORS_ORIGINS", "https://ok.example, not an origin")
    with pytest.raises(ConfigError, match="LUCID_CORS_ORIGINS"):
        load(Settings)


def test_cors_origins_are_split_and_trimmed(settings: Settings) -> None:
    both = settings.model_copy(
        update={"cors_origins": f"{ORIGIN}, http://127.0.0.1:3000"})
    assert both.allowed_origins == [ORIGIN, "http://127.0.0.1:3000"]
    assert settings.allowed_origins == []
