"""The one client layer: each operation names a real endpoint, and one decoder reads errors.

The CLI's `LucidClient` (sync, `/v1`) and the gateway's `ProcessorClient` (async,
`/internal/v1`) both send `sessions.contract.operations` requests and read their
answers into the contract models; an error body is decoded once (`decode_error`)
into the CLI's `ClientError` and the gateway's `ServiceError` alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from sessions.api.processor_client import ProcessorClient
from sessions.client import ClientError, LucidClient
from sessions.common.errors import OffsetMismatch, ServiceError, UpstreamUnavailable
from sessions.contract import operations as ops
from sessions.contract.models import (
    CreateSession,
    CreateToken,
    NewToken,
    PrefixCheck,
    RotateSigningIn,
)
from tests.api.fakes import SESSION_ID, session_json

Doc = dict[str, Any]
SID = SESSION_ID
TOKEN_ID = "0123456789abcdef"  # noqa: S105 - an id, not a secret

SHARED: list[ops.Operation[Any]] = [
    ops.create_session(CreateSession(labels={}, retention_days=None, upload_length=None)),
    ops.list_sessions(ops.session_query(state="recording", labels=["a:b"], cursor=SID)),
    ops.get_session(SID), ops.finalize(SID),
    ops.delete_session(SID), ops.set_hold(SID, True), ops.set_hold(SID, False),
    ops.manifest(SID), ops.checkpoint(SID, 3), ops.inclusion_proof(SID, 0, 1),
    ops.consistency_proof(SID, 1, 2), ops.verify(SID, 5), ops.upload_status(SID),
    ops.upload(SID, {"Upload-Offset": "0"}), ops.prefix_check(SID, 0, bytes(32)),
    ops.replay(SID, "bytes=0-1"), ops.sealed_chunk(SID, 0), ops.node(), ops.rotate_keys(),
    ops.rotate_signing_key(RotateSigningIn(compromised_after=None)), ops.audit_page(),
    ops.audit_checkpoint()]
PUBLIC_ONLY: list[ops.Operation[Any]] = [
    ops.create_token(CreateToken(name="ws", role="viewer", expires_in=None)),  # type: ignore[arg-type]
    ops.list_tokens(), ops.revoke_token(TOKEN_ID)]
INTERNAL_ONLY: list[ops.Operation[Any]] = [
    ops.set_upload_length(SID, 5),  # the gateway declares it through tus
    ops.store_token(NewToken(id=TOKEN_ID, name="ws", role="viewer",  # type: ignore[arg-type]
                             secret_hash="0" * 64, expires_at=None, created_by=None)),
    ops.stored_tokens(), ops.stored_token(TOKEN_ID), ops.revoke_stored_token(TOKEN_ID)]


def _routes(doc: Doc, prefix: str) -> list[tuple[str, re.Pattern[str]]]:
    out = []
    for path, item in doc["paths"].items():
        if path.startswith(prefix + "/"):
            template = re.escape(path[len(prefix):])
            pattern = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", template) + "$")
            out += [(method.upper(), pattern) for method in item]
    return out


def _served(routes: list[tuple[str, re.Pattern[str]]], op: ops.Operation[Any]) -> bool:
    return any(method == op.method and pattern.match(op.path) for method, pattern in routes)


def test_every_operation_is_an_endpoint_of_the_gateway_and_of_the_processor(
        docs: dict[str, Doc]) -> None:
    public, internal = _routes(docs["gateway"], "/v1"), _routes(docs["processor"], "/internal/v1")
    assert [op.path for op in SHARED + PUBLIC_ONLY if not _served(public, op)] == []
    assert [op.path for op in SHARED + INTERNAL_ONLY if not _served(internal, op)] == []


def test_decode_error_reads_any_body() -> None:
    reply = ops.decode_error(409, b'{"error": "offset_mismatch", "detail": "no", "offset": 7}')
    assert (reply.code, reply.detail, reply.extra, reply.recognised) == (
        "offset_mismatch", "no", {"offset": 7}, True)
    assert reply.body() == {"error": "offset_mismatch", "detail": "no", "offset": 7}
    for junk in (b"", b"<html>", b"[1]", b'{"error": 5}', b"\xff\xfe"):
        odd = ops.decode_error(502, junk)
        assert (odd.code, odd.recognised, odd.body()) == ("http_error", False, None)


def _answering(status: int, body: bytes) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(status, content=body))


ERROR = b'{"error": "offset_mismatch", "detail": "at 7", "offset": 7}'


def test_the_cli_builds_its_errors_from_the_decoded_reply() -> None:
    client = LucidClient("http://gw.test", None, transport=_answering(409, ERROR))
    with pytest.raises(ClientError) as caught:
        client.get_session(SID)
    assert (caught.value.code, caught.value.detail, caught.value.status) == (
        "offset_mismatch", "at 7", 409)
    assert caught.value.body == ops.decode_error(409, ERROR).body()
    plain = LucidClient("http://gw.test", None, transport=_answering(502, b"<html>"))
    with pytest.raises(ClientError) as caught:
        plain.node()
    assert (caught.value.code, caught.value.detail) == ("http_error", "HTTP 502 Bad Gateway")


@pytest.mark.anyio
async def test_the_gateway_builds_its_errors_from_the_decoded_reply() -> None:
    client = ProcessorClient("http://processor.test", "t", transport=_answering(409, ERROR))
    try:
        with pytest.raises(OffsetMismatch) as caught:
            await client.get_session(SID)
        assert (caught.value.detail, caught.value.extra) == ("at 7", {"offset": 7})
    finally:
        await client.aclose()


def test_the_cli_refuses_an_answer_that_is_not_the_model() -> None:
    body = session_json()
    del body["chunk_count"]
    client = LucidClient("http://gw.test", None,
                         transport=_answering(200, json.dumps(body).encode()))
    with pytest.raises(ClientError) as caught:
        client.get_session(SID)
    assert caught.value.code == "bad_response" and "Session" in caught.value.detail


@pytest.mark.anyio
async def test_the_gateway_refuses_an_answer_that_is_not_the_model() -> None:
    client = ProcessorClient("http://processor.test", "t",
                             transport=_answering(200, b'{"offset": "many"}'))
    try:
        with pytest.raises(UpstreamUnavailable, match="malformed"):
            await client.upload_status(SID)
        assert not issubclass(UpstreamUnavailable, ClientError)
        assert issubclass(UpstreamUnavailable, ServiceError)
    finally:
        await client.aclose()


def test_an_operation_reads_into_the_contract_model() -> None:
    session = ops.get_session(SID).read(200, json.dumps(session_json()).encode())
    assert session.id == SID and session.state.value == "recording"
    assert ops.audit_checkpoint().read(204, b"") is None
    assert ops.audit_checkpoint().read(200, b"signed") == b"signed"
    assert ops.prefix_check(SID, 3, bytes(32)).json == PrefixCheck(
        offset=3, sha256="A" * 43 + "=").model_dump()
