"""The API-token contract, on both metadata backends: stored hashed, unique ids, revoke once.

`meta` is parametrised over SQLite and MongoDB (conftest.py), so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sessions.common.errors import BadRequest, Conflict, InvalidId, NotFound
from sessions.storage.metastore import MetadataStore
from sessions.storage.records import NewSession, TokenRecord

pytestmark = pytest.mark.anyio

DIGEST = hashlib.sha256(b"secret").digest()
FIRST_ID = "0123456789abcdef"


def token(tid: str = FIRST_ID, **overrides: Any) -> TokenRecord:
    fields: dict[str, Any] = {"id": tid, "name": "ws-17", "role": "recorder",
                              "secret_hash": DIGEST, "created_at": ""}
    return TokenRecord(**(fields | overrides))


async def test_a_token_round_trips_with_its_hash_only(meta: MetadataStore) -> None:
    made = await meta.create_token(token(expires_at="2030-01-01T00:00:00.000000Z",
                                         created_by="bootstrap-admin"))
    assert made.created_at.endswith("Z") and made.revoked_at is None
    got = await meta.get_token("0123456789abcdef")
    assert got == made
    assert got.secret_hash == DIGEST and got.expires_at == "2030-01-01T00:00:00.000000Z"


async def test_token_ids_are_unique(meta: MetadataStore) -> None:
    await meta.create_token(token())
    with pytest.raises(Conflict):
        await meta.create_token(token(name="another", role="admin"))
    assert (await meta.get_token("0123456789abcdef")).name == "ws-17"


async def test_revoke_is_idempotent_and_keeps_the_first_time(meta: MetadataStore) -> None:
    await meta.create_token(token())
    first = await meta.revoke_token("0123456789abcdef")
    assert first.revoked_at is not None
    again = await meta.revoke_token("0123456789abcdef")
    assert again.revoked_at == first.revoked_at
    with pytest.raises(NotFound):
        await meta.revoke_token("ffffffffffffffff")


async def test_tokens_are_listed_oldest_first(meta: MetadataStore) -> None:
    for n in range(3):
        await meta.create_token(token(f"{n:016x}", name=f"t{n}"))
    assert [t.name for t in await meta.list_tokens()] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("bad", [{"id": "BOOTSTRAP-ADMIN0"}, {"id": "short"},
                                 {"role": "root"}, {"secret_hash": b"x" * 31}, {"name": ""}])
async def test_malformed_tokens_are_refused(meta: MetadataStore, bad: dict[str, Any]) -> None:
    with pytest.raises((BadRequest, InvalidId)):
        await meta.create_token(token(**bad))
    assert await meta.list_tokens() == []


async def test_unknown_or_malformed_ids_are_not_found(meta: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await meta.get_token("ffffffffffffffff")
    with pytest.raises(InvalidId):
        await meta.get_token("../../etc")


async def test_a_session_keeps_its_owner(meta: MetadataStore,
                                         new_session: Callable[..., NewSession]) -> None:
    owned = await meta.create_session(new_session(owner="0123456789abcdef"))
    assert (await meta.get_session(owned.id)).owner == "0123456789abcdef"
    await meta.set_upload_length(owned.id, 10)  # a compare-and-set keeps it
    assert (await meta.get_session(owned.id)).owner == "0123456789abcdef"
    unowned = await meta.create_session(new_session())
    assert (await meta.get_session(unowned.id)).owner is None


async def test_the_http_api_never_takes_a_secret(client: httpx.AsyncClient) -> None:
    body = {"id": "0123456789abcdef", "name": "ws-17", "role": "auditor",
            "secret_hash": DIGEST.hex()}
    assert (await client.post("/internal/v1/tokens", json=body | {"secret": "x"})
            ).status_code == 422
    assert (await client.post("/internal/v1/tokens", json=body | {"expires_at": "tomorrow"})
            ).status_code == 422
    made = await client.post("/internal/v1/tokens", json=body)
    assert made.status_code == 201 and made.json()["secret_hash"] == DIGEST.hex()
    listed = (await client.get("/internal/v1/tokens")).json()["items"]
    assert [t["id"] for t in listed] == ["0123456789abcdef"]
    revoked = await client.post("/internal/v1/tokens/0123456789abcdef/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert (await client.get("/internal/v1/tokens/ffffffffffffffff")).status_code == 404
