"""Storage and the processor agree on storage's internal API: one contract, checked both ways.

Storage documents (OpenAPI) and answers with the models of `sessions/contract/storage.py`;
the processor's `StorageClient` parses every answer into the same models.  These tests
read storage's served OpenAPI document against the contract, drive every
`StorageClient` call against the real storage app (in process, httpx ASGITransport),
and show that an answer missing a field is refused with a clear 503, never a
KeyError or a 500.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from sessions.api.config import Settings as ApiSettings
from sessions.api.main import create_app as api_app
from sessions.common.checksums import Checksum
from sessions.common.errors import ServiceError, SessionNotFound, UpstreamUnavailable
from sessions.common.states import SessionState
from sessions.common.tokens import NewToken, Role
from sessions.contract import storage as contract
from sessions.contract.models import Session, SessionPage
from sessions.contract.operations import reads
from sessions.contract.storage import (
    CommitOut,
    CreateSessionIn,
    StoredSession,
    StoredSessionPage,
    WrappedKeyModel,
)
from sessions.core import ChunkEntry, MasterKey, new_data_key
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.main import create_app as processor_app
from sessions.processor.storage_client import StorageClient
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.main import create_app as storage_app

API = "/internal/v1"
SID = "01JDZ0Q3W6Y8E2V7K4N5P9R1ST"
MIB = 1 << 20

# Every storage route that answers with a session record, and the component it documents.
SESSION_ROUTES = {
    ("post", f"{API}/sessions"): "StoredSession",
    ("get", f"{API}/sessions/{{session_id}}"): "StoredSession",
    ("post", f"{API}/sessions/{{session_id}}/state"): "StoredSession",
    ("post", f"{API}/sessions/{{session_id}}/finalize"): "StoredSession",
    ("put", f"{API}/sessions/{{session_id}}/wrapped-key"): "StoredSession",
    ("put", f"{API}/sessions/{{session_id}}/upload-length"): "StoredSession",
    ("put", f"{API}/sessions/{{session_id}}/hold"): "StoredSession",
    ("get", f"{API}/sessions"): "StoredSessionPage",
    ("get", f"{API}/expired"): "StoredSessionPage",
    ("get", f"{API}/idle"): "StoredSessionPage",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[FastAPI]:
    app = storage_app(StorageSettings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def spec(tmp_path: Path) -> dict[str, Any]:
    """Return storage's OpenAPI document (building it needs no running lifespan)."""
    doc: dict[str, Any] = storage_app(StorageSettings(data_dir=tmp_path)).openapi()
    return doc


def storage_token(tmp_path: Path) -> str:
    return StorageSettings(data_dir=tmp_path).service_token()


@pytest.fixture
async def client(storage: FastAPI, tmp_path: Path) -> AsyncIterator[StorageClient]:
    c = StorageClient("http://storage", storage_token(tmp_path),
                      transport=httpx.ASGITransport(app=storage))
    yield c
    await c.aclose()


def _json_answers(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Return {(method, path): schema of the 2xx JSON answer} of every internal API route."""
    found = {}
    for path, item in spec["paths"].items():
        if not path.startswith(API):
            continue  # /health and /ready
        for method, op in item.items():
            for status, response in op.get("responses", {}).items():
                media = response.get("content", {}).get("application/json")
                if status.startswith("2") and media is not None and "schema" in media:
                    found[(method, path)] = media["schema"]
    return found


def _component(spec: dict[str, Any], schema: dict[str, Any]) -> str:
    ref: str = schema["$ref"]
    return ref.removeprefix("#/components/schemas/")


def _fields(model: type[BaseModel]) -> tuple[set[str], set[str]]:
    """Return (properties, required) of the JSON the model parses (its wire names)."""
    schema = model.model_json_schema(mode="validation")
    return set(schema["properties"]), set(schema.get("required", ()))


# -- the documents --------------------------------------------------------------------------

def test_every_storage_route_that_returns_a_session_documents_stored_session(
        spec: dict[str, Any]) -> None:
    answers = _json_answers(spec)
    for route, name in SESSION_ROUTES.items():
        assert _component(spec, answers[route]) == name, route
    page = spec["components"]["schemas"]["StoredSessionPage"]
    assert page["properties"]["items"]["items"] == {"$ref": "#/components/schemas/StoredSession"}
    # and no other JSON answer carries a session record under another name
    others = {route for route, schema in answers.items() if route not in SESSION_ROUTES}
    for route in others:
        assert _component(spec, answers[route]) not in {"SessionOut", "Session"}, route


def test_storage_documents_exactly_the_fields_the_processor_requires(
        spec: dict[str, Any]) -> None:
    """Each documented JSON answer is the contract model of its name, field for field:
    storage's `required` is the set the processor's parser refuses to go without."""
    answers = _json_answers(spec)
    assert answers, "storage documents no JSON answers"
    for route, schema in answers.items():
        name = _component(spec, schema)
        model = getattr(contract, name, None)
        assert isinstance(model, type) and issubclass(model, BaseModel), (route, name)
        documented = spec["components"]["schemas"][name]
        properties, required = _fields(model)
        assert set(documented["properties"]) == properties, (route, name)
        assert set(documented.get("required", ())) == required, (route, name)
    stored, required = _fields(StoredSession)
    assert "wrapped_key" in stored and "wrapped_key" in required
    assert stored - {"wrapped_key"} == set(Session.model_fields)


def test_every_storage_route_documents_its_answer(spec: dict[str, Any]) -> None:
    """A JSON answer is a named contract schema; the others say their media type."""
    for path, item in spec["paths"].items():
        if not path.startswith(API):
            continue
        for method, op in item.items():
            ok = {s: r for s, r in op["responses"].items() if s.startswith("2")}
            assert ok, (method, path)
            for status, response in ok.items():
                content = response.get("content")
                if status == "204":
                    assert not content, (method, path)
                    continue
                assert content, (method, path, status)
                if "application/json" in content and path not in (
                        f"{API}/sessions/{{session_id}}/manifest",):
                    assert "$ref" in content["application/json"]["schema"], (method, path)


# -- the processor's client against the real storage ------------------------------------------

@pytest.mark.anyio
async def test_storage_client_parses_every_answer_of_the_real_storage(
        client: StorageClient) -> None:
    master = MasterKey(bytes(range(32)))
    wrapped = master.wrap(new_data_key(), session_id=SID)
    created = await client.create_session(CreateSessionIn(
        id=SID, labels={"host": "web-1"}, retention_days=30,
        wrapped_key=WrappedKeyModel.of(wrapped), chunk_size=1024, zstd_level=3,
        format_version=1, upload_length=None, owner="tok-1"))
    assert isinstance(created, StoredSession)
    assert created.wrapped_key == wrapped  # the processor's own WrappedKey, parsed
    assert created.state is SessionState.RECORDING and created.owner == "tok-1"
    shown = created.public()
    assert type(shown) is Session and "wrapped_key" not in shown.model_dump()
    assert shown.model_dump() == created.model_dump(exclude={"stored_key"})

    data = b"sealed chunk bytes"
    leaf = hashlib.sha256(b"\x00" + data).digest()
    lease = await client.acquire_lease(SID, holder="proc-1", ttl_seconds=30)
    assert (lease.holder, lease.token) == ("proc-1", 1) and lease.expires_at.endswith("Z")
    await client.put_chunk(SID, 0, data, leaf, lease_token=lease.token)
    crc = Checksum.of("crc32c", data)
    wrong = Checksum("crc32c", bytes(a ^ 1 for a in crc.digest))
    with pytest.raises(ServiceError) as refused:
        await client.put_chunk(SID, 1, data, leaf, checksum=wrong, lease_token=lease.token)
    assert refused.value.status == 400  # storage's chunk_checksum_mismatch (its own code)
    await client.put_chunk(SID, 0, data, leaf, checksum=crc,
                           lease_token=lease.token)
    row = ChunkEntry(index=0, offset=0, length=10, sealed_length=len(data), leaf_hash=leaf,
                     compressed=False)
    committed = await client.commit(SID, expected_offset=0, chunks=[row],
                                    lease_token=lease.token)
    assert committed == CommitOut(offset=10, chunk_count=1)
    renewed = await client.renew_lease(SID, holder="proc-1", token=1, ttl_seconds=30)
    assert renewed.token == 1
    await client.release_lease(SID, holder="proc-1", token=1)
    assert await client.chunks(SID, count=1) == [row]
    assert await client.leaves(SID, size=1) == [leaf]
    assert await client.get_chunk(SID, 0) == data
    assert bytes(await client.read_chunk_into(SID, 0, memoryview(bytearray(64)))) == data

    assert (await client.set_upload_length(SID, 10)).upload_length == 10
    page = await client.list_sessions([("limit", "10")])
    assert isinstance(page, SessionPage) and [s.id for s in page.items] == [SID]
    assert type(page.items[0]) is Session
    assert [s.id async for s in client.all_sessions()] == [SID]
    assert await client.key_usage() == {wrapped.key_id: 1}
    assert await client.stats() == {s.value: int(s is SessionState.RECORDING)
                                    for s in SessionState}
    assert await client.expired(before="2999-01-01T00:00:00.000000Z", limit=10) != []
    idle = await client.idle(state=SessionState.RECORDING,
                             before="2999-01-01T00:00:00.000000Z", limit=10)
    assert [s.id for s in idle] == [SID]
    held = await client.set_hold(SID, hold=True, expected_key_id=wrapped.key_id,
                                 wrapped=wrapped)
    assert held.legal_hold is True
    moved = await client.transition(SID, to=SessionState.FINALIZING,
                                    allowed_from=(SessionState.RECORDING,))
    assert moved.state is SessionState.FINALIZING
    assert await client.discard_staged(SID) == []
    assert await client.kept_checkpoint(SID) is None

    token = await client.create_token(NewToken(
        id="0123456789abcdef", name="ci", role=Role.RECORDER, secret_hash="ab" * 32))
    assert token.id == "0123456789abcdef"
    assert [t.id for t in (await client.list_tokens()).items] == [token.id]
    assert (await client.get_token(token.id)).revoked_at is None
    assert (await client.revoke_token(token.id)).revoked_at is not None

    size, head = await client.audit_head()
    assert (size, head) == (0, bytes(32))
    assert (await client.audit_page({"start": "0", "limit": "10"})).items == []
    assert await client.audit_checkpoint() is None


@pytest.mark.anyio
async def test_a_storage_error_keeps_its_code_through_decode_error(
        client: StorageClient) -> None:
    with pytest.raises(SessionNotFound) as info:
        await client.get_session(SID)
    assert info.value.status == 404 and info.value.code == "session_not_found"


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"", b'{"error": 5}'])
@pytest.mark.anyio
async def test_an_error_body_that_is_not_storage_s_becomes_upstream_unavailable(
        body: bytes) -> None:
    c = StorageClient("http://storage", "t", transport=httpx.MockTransport(
        lambda request: httpx.Response(502, content=body)))
    with pytest.raises(UpstreamUnavailable):
        await c.get_session(SID)
    await c.aclose()


# -- an answer outside the contract ------------------------------------------------------------

def test_the_parser_names_a_missing_field_and_never_echoes_a_value() -> None:
    record = json.loads(_record_json())
    del record["chunk_count"]
    with pytest.raises(contract.MalformedAnswer, match="chunk_count: Field required"):
        reads(StoredSession)(200, json.dumps(record).encode())
    record = json.loads(_record_json())
    record["wrapped_key"] = {"key_id": "k", "blob": "!!secret-looking!!"}
    with pytest.raises(contract.MalformedAnswer) as info:
        reads(StoredSession)(200, json.dumps(record).encode())
    assert "secret-looking" not in str(info.value)
    with pytest.raises(contract.MalformedAnswer):
        reads(StoredSessionPage)(200, b"not json")


def _record_json() -> bytes:
    return StoredSession.model_validate({
        "id": SID, "state": "recording", "labels": {}, "created_at": "2025-11-27T12:00:00.000000Z",
        "updated_at": "2025-11-27T12:00:00.000000Z", "retention_days": None, "offset": 0,
        "chunk_count": 0, "sealed_bytes": 0, "chunk_size": 1024, "zstd_level": 3,
        "format_version": 1, "root_hash": None,
        "wrapped_key": {"key_id": "0123456789abcdef", "blob": "AAAA"}}).model_dump_json(
            by_alias=True).encode()


class _Dropping(httpx.AsyncBaseTransport):
    """The real storage, with one field dropped from every session record it answers."""

    def __init__(self, app: FastAPI, field: str) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.field = field
        self.dropped = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if not resp.headers.get("content-type", "").startswith("application/json"):
            return resp
        body = json.loads(await resp.aread())
        for record in body.get("items", [body]) if isinstance(body, dict) else []:
            if isinstance(record, dict) and "wrapped_key" in record:
                record.pop(self.field, None)
                self.dropped += 1
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        return httpx.Response(resp.status_code, headers=headers, json=body)


@pytest.mark.parametrize("field", ["chunk_count", "wrapped_key", "state"])
@pytest.mark.anyio
async def test_a_field_missing_from_storage_s_answer_is_a_clear_503_not_a_500(
        tmp_path: Path, storage: FastAPI, field: str) -> None:
    """Through the whole stack: the gateway answers 503 `upstream_unavailable` naming the
    field; nothing crashes on a KeyError and no record material leaks."""
    dropping = _Dropping(storage, field)
    processor = processor_app(ProcessorSettings(data_dir=tmp_path, chunk_size=MIB,
                                                storage_url="http://storage"),
                              storage_transport=dropping)
    api = api_app(ApiSettings(data_dir=tmp_path, processor_url="http://processor"),
                  processor_transport=httpx.ASGITransport(app=processor))
    async with AsyncExitStack() as stack:
        for app in (processor, api):
            await stack.enter_async_context(app.router.lifespan_context(app))
        token = (tmp_path / "secrets" / "admin.token").read_text().strip()
        gateway = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://api/v1",
            headers={"Authorization": f"Bearer {token}"}))
        for r in (await gateway.post("/sessions", json={"labels": {}}),
                  await gateway.get("/sessions")):
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["error"] == "upstream_unavailable"
            assert field in body["detail"] and "malformed" in body["detail"]
            assert "Traceback" not in r.text and "blob" not in r.text
    assert dropping.dropped >= 2
