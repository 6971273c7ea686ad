"""Session routes: validation at the edge, forwarding, response filtering, error bodies."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.fakes import SESSION_ID, FakeProcessor, auth, error_of, session_json

pytestmark = pytest.mark.anyio

INTERNAL = "/internal/v1/sessions"


async def test_create_forwards_the_validated_body(gateway: httpx.AsyncClient,
                                                  fake: FakeProcessor) -> None:
    created = session_json(labels={"host": "pc-1"}, retention_days=30)
    fake.reply("POST", INTERNAL, 201, created | {"wrapped_key": {"key_id": "k", "blob": "b"}})
    resp = await gateway.post("/v1/sessions", headers=auth(),
                              json={"labels": {"host": "pc-1"}, "retention_days": 30})
    assert resp.status_code == 201
    assert resp.json() == created, "fields outside the public Session must be dropped"
    assert json.loads(fake.last_body()) == {"labels": {"host": "pc-1"}, "retention_days": 30,
                                            "upload_length": None, "owner": "bootstrap-admin"}


async def test_create_without_body_uses_defaults(gateway: httpx.AsyncClient,
                                                 fake: FakeProcessor) -> None:
    fake.reply("POST", INTERNAL, 201, session_json())
    resp = await gateway.post("/v1/sessions", headers=auth())
    assert resp.status_code == 201
    assert json.loads(fake.last_body()) == {"labels": {}, "retention_days": None,
                                            "upload_length": None, "owner": "bootstrap-admin"}


@pytest.mark.parametrize("body", [
    {"labels": {"Host": "x"}},
    {"labels": {"-host": "x"}},
    {"labels": {"h" * 65: "x"}},
    {"labels": {"host": "x" * 257}},
    {"labels": {f"k{i}": "v" for i in range(33)}},
    {"labels": {"host": 1}},
    {"retention_days": 0},
    {"retention_days": 36501},
    {"retention_days": "soon"},
    {"surprise": True},
    [],
], ids=["upper-key", "dash-key", "long-key", "long-value", "33-labels", "int-value",
        "retention-0", "retention-too-long", "retention-text", "extra-field", "not-an-object"])
async def test_create_rejects_bad_bodies_with_422(gateway: httpx.AsyncClient,
                                                  fake: FakeProcessor, body: object) -> None:
    resp = await gateway.post("/v1/sessions", headers=auth(), json=body)
    assert resp.status_code == 422
    assert error_of(resp) == "invalid_parameter"
    assert fake.requests == []


async def test_create_rejects_malformed_json(gateway: httpx.AsyncClient) -> None:
    resp = await gateway.post("/v1/sessions", content=b"{nope",
                              headers=auth(**{"Content-Type": "application/json"}))
    assert resp.status_code == 422
    assert error_of(resp) == "invalid_parameter"


async def test_json_body_over_the_limit_is_413(gateway: httpx.AsyncClient,
                                               fake: FakeProcessor) -> None:
    body = json.dumps({"labels": {"k": "v" * 3000}}).encode()
    resp = await gateway.post("/v1/sessions", content=body,
                              headers=auth(**{"Content-Type": "application/json"}))
    assert resp.status_code == 413
    assert error_of(resp) == "payload_too_large"

    async def chunks():  # no Content-Length: counted while it arrives
        for i in range(0, len(body), 512):
            yield body[i:i + 512]

    resp = await gateway.post("/v1/sessions", content=chunks(),
                              headers=auth(**{"Content-Type": "application/json"}))
    assert resp.status_code == 413
    assert error_of(resp) == "payload_too_large"
    assert fake.requests == []


async def test_list_forwards_the_query(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    page = {"items": [session_json()], "next_cursor": SESSION_ID}
    leaky = {"items": [session_json(wrapped_key={"key_id": "k", "blob": "b"})],
             "next_cursor": SESSION_ID}
    fake.reply("GET", INTERNAL, body=leaky)
    resp = await gateway.get("/v1/sessions", headers=auth(), params=[
        ("state", "completed"), ("label", "host:pc-1"), ("label", "site:a:b"),
        ("cursor", SESSION_ID), ("limit", "10")])
    assert resp.status_code == 200
    assert resp.json() == page
    assert sorted(fake.last.url.params.multi_items()) == sorted([
        ("state", "completed"), ("label", "host:pc-1"), ("label", "site:a:b"),
        ("cursor", SESSION_ID), ("limit", "10")])


@pytest.mark.parametrize("query", [
    {"state": "bogus"}, {"label": "nocolon"}, {"label": "Host:x"}, {"limit": "0"},
    {"limit": "501"}, {"limit": "many"}, {"cursor": "not-an-id"}, {"cursor": SESSION_ID.lower()},
])
async def test_list_query_validation_is_422(gateway: httpx.AsyncClient, fake: FakeProcessor,
                                            query: dict[str, str]) -> None:
    resp = await gateway.get("/v1/sessions", headers=auth(), params=query)
    assert resp.status_code == 422
    assert error_of(resp) == "invalid_parameter"
    assert fake.requests == []


@pytest.mark.parametrize("path", ["not-an-id", SESSION_ID.lower(), "0" * 25, "I" * 26,
                                  "8" + SESSION_ID[1:]])
async def test_invalid_ids_are_400(gateway: httpx.AsyncClient, fake: FakeProcessor,
                                   path: str) -> None:
    for method, suffix in [("GET", ""), ("DELETE", ""), ("POST", "/finalize"),
                           ("GET", "/manifest"), ("GET", "/checkpoint"), ("POST", "/verify"),
                           ("GET", "/replay"), ("GET", "/chunks/0"), ("GET", "/upload")]:
        resp = await gateway.request(method, f"/v1/sessions/{path}{suffix}", headers=auth())
        assert resp.status_code == 400, (method, suffix)
        assert error_of(resp) == "invalid_id"
    assert fake.requests == []


async def test_show_passes_not_found_through(gateway: httpx.AsyncClient,
                                             fake: FakeProcessor) -> None:
    body = {"error": "session_not_found", "detail": "no such session"}
    fake.reply("GET", f"{INTERNAL}/{SESSION_ID}", 404, body)
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}", headers=auth())
    assert (resp.status_code, resp.json()) == (404, body)


async def test_delete_is_204(gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    async def gone(_: httpx.Request) -> httpx.Response:
        return httpx.Response(204)
    fake.on("DELETE", f"{INTERNAL}/{SESSION_ID}", gone)
    resp = await gateway.delete(f"/v1/sessions/{SESSION_ID}", headers=auth())
    assert resp.status_code == 204
    assert resp.content == b""


async def test_manifest_and_checkpoint_bytes_pass_unchanged(gateway: httpx.AsyncClient,
                                                            fake: FakeProcessor) -> None:
    manifest = b'{"b":1,"a":2}'
    checkpoint = "node/sessions/x\n1\nAAAA\n\n\u2014 node sig\n".encode()

    async def manifest_handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=manifest, headers={"Content-Type": "application/json"})

    async def checkpoint_handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=checkpoint, headers={"Content-Type": "text/plain"})

    fake.on("GET", f"{INTERNAL}/{SESSION_ID}/manifest", manifest_handler)
    fake.on("GET", f"{INTERNAL}/{SESSION_ID}/checkpoint", checkpoint_handler)
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/manifest", headers=auth())
    assert resp.content == manifest
    assert resp.headers["content-type"] == "application/json"
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}/checkpoint?size=1", headers=auth())
    assert resp.content == checkpoint
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert fake.last.url.params["size"] == "1"


async def test_proofs_forward_their_parameters(gateway: httpx.AsyncClient,
                                               fake: FakeProcessor) -> None:
    inclusion = {"index": 2, "size": 5, "leaf_hash": "aa", "root_hash": "bb", "proof": ["cc"]}
    consistency = {"from_size": 2, "to_size": 5, "from_root": "aa", "to_root": "bb",
                   "proof": []}
    fake.reply("GET", f"{INTERNAL}/{SESSION_ID}/proof/inclusion", body=inclusion)
    fake.reply("GET", f"{INTERNAL}/{SESSION_ID}/proof/consistency", body=consistency)
    base = f"/v1/sessions/{SESSION_ID}/proof"
    resp = await gateway.get(f"{base}/inclusion?index=2&size=5", headers=auth())
    assert resp.json() == inclusion
    assert dict(fake.last.url.params) == {"index": "2", "size": "5"}
    resp = await gateway.get(f"{base}/consistency?from=2&to=5", headers=auth())
    assert resp.json() == consistency
    assert dict(fake.last.url.params) == {"from": "2", "to": "5"}
    for bad in ("inclusion?index=-1", "inclusion?index=5&size=5", "inclusion",
                "consistency?from=3&to=2", "consistency?to=1"):
        resp = await gateway.get(f"{base}/{bad}", headers=auth())
        assert resp.status_code == 422, bad


async def test_verify_forwards_the_sample(gateway: httpx.AsyncClient,
                                          fake: FakeProcessor) -> None:
    report = {"session_id": SESSION_ID, "chunk_count": 4, "checked": 2, "sampled": True,
              "ok": False, "root_ok": True, "signature_ok": True,
              "bad_chunks": [{"index": 1, "reason": "altered"}],
              "metadata_findings": [{"what": "leaf_hash", "index": 3, "detail": "forged"}]}
    fake.reply("POST", f"{INTERNAL}/{SESSION_ID}/verify", body=report)
    resp = await gateway.post(f"/v1/sessions/{SESSION_ID}/verify?sample=50", headers=auth())
    assert resp.json() == report
    assert fake.last.url.params["sample"] == "50"
    for bad in ("0", "-1", "100.5", "x"):
        resp = await gateway.post(f"/v1/sessions/{SESSION_ID}/verify?sample={bad}",
                                  headers=auth())
        assert resp.status_code == 422


async def test_unreachable_processor_is_503(gateway: httpx.AsyncClient,
                                            fake: FakeProcessor) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    async def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    fake.on("GET", INTERNAL, refuse)
    fake.on("POST", INTERNAL, slow)
    for resp in (await gateway.get("/v1/sessions", headers=auth()),
                 await gateway.post("/v1/sessions", headers=auth())):
        assert resp.status_code == 503
        assert error_of(resp) == "upstream_unavailable"
        assert "Errno" not in resp.text


async def test_processor_rejecting_the_service_token_is_not_the_clients_401(
        gateway: httpx.AsyncClient, fake: FakeProcessor) -> None:
    fake.reply("GET", INTERNAL, 401, {"error": "unauthorized", "detail": "bad token"})
    resp = await gateway.get("/v1/sessions", headers=auth())
    assert resp.status_code == 503
    assert error_of(resp) == "upstream_unavailable"


async def test_unexpected_failures_have_no_traceback(gateway: httpx.AsyncClient,
                                                     fake: FakeProcessor) -> None:
    # Not a Session: the answer is parsed into the contract model at the client boundary,
    # so a malformed one is the processor's fault (503), never a half-shown session.
    fake.reply("GET", f"{INTERNAL}/{SESSION_ID}", body={"id": SESSION_ID})
    resp = await gateway.get(f"/v1/sessions/{SESSION_ID}", headers=auth())
    assert resp.status_code == 503
    assert resp.json() == {"error": "upstream_unavailable",
                           "detail": "the chunk processor sent a malformed answer"}

    async def garbage(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>oops</html>")
    fake.on("GET", INTERNAL, garbage)
    resp = await gateway.get("/v1/sessions", headers=auth())
    assert resp.status_code == 503
    assert error_of(resp) == "upstream_unavailable"
    assert "html" not in resp.text

    async def broken(_: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"Traceback (most recent call last): ...")
    fake.on("GET", INTERNAL, broken)
    resp = await gateway.get("/v1/sessions", headers=auth())
    assert resp.status_code == 503
    assert "Traceback" not in resp.text


async def test_unknown_routes_use_the_error_shape(gateway: httpx.AsyncClient) -> None:
    resp = await gateway.get("/v1/nothing", headers=auth())
    assert resp.status_code == 404
    assert error_of(resp) == "not_found"
    resp = await gateway.put("/v1/sessions", headers=auth())
    assert resp.status_code == 405
    assert error_of(resp) == "method_not_allowed"
