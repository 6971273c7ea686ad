"""Storage keeps the processor's last signed checkpoint of a session, uninterpreted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio
API = "/internal/v1"
NOTE = "lucid-x/sessions/ID\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n— lucid-x AAAA\n"


async def test_a_kept_checkpoint_round_trips_until_finalize_replaces_it(
        client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]]) -> None:
    sid = (await client.post(f"{API}/sessions", json=session_body())).json()["id"]
    none = await client.get(f"{API}/sessions/{sid}/checkpoint")
    assert none.status_code == 204 and none.content == b""  # 404 would say "no such session"
    for text in (NOTE, NOTE.replace("\n0\n", "\n1\n")):  # the latest one is kept
        put = await client.put(f"{API}/sessions/{sid}/checkpoint", json={"checkpoint": text})
        assert put.status_code == 204, put.text
        got = await client.get(f"{API}/sessions/{sid}/checkpoint")
        assert got.status_code == 200 and got.text == text
        assert got.headers["content-type"].startswith("text/plain")
    body = (await client.get(f"{API}/sessions/{sid}")).json()
    assert "checkpoint" not in body  # the record itself is unchanged

    await client.post(f"{API}/sessions/{sid}/state", json={"to": "finalizing"})
    done = await client.post(f"{API}/sessions/{sid}/finalize", json={
        "root_hash": "ab" * 32, "checkpoint": "final\n", "manifest": "{}"})
    assert done.status_code == 200, done.text
    assert (await client.get(f"{API}/sessions/{sid}/checkpoint")).text == "final\n"
    late = await client.put(f"{API}/sessions/{sid}/checkpoint", json={"checkpoint": NOTE})
    assert late.status_code == 409 and late.json()["error"] == "invalid_state"


@pytest.mark.parametrize("body", [{}, {"checkpoint": ""}, {"checkpoint": "x" * (64 * 1024 + 1)},
                                  {"checkpoint": NOTE, "other": 1}])
async def test_a_malformed_body_is_refused(client: httpx.AsyncClient,
                                           session_body: Callable[..., dict[str, Any]],
                                           body: dict[str, Any]) -> None:
    sid = (await client.post(f"{API}/sessions", json=session_body())).json()["id"]
    resp = await client.put(f"{API}/sessions/{sid}/checkpoint", json=body)
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_parameter"


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    unknown = "0" * 26
    assert (await client.get(f"{API}/sessions/{unknown}/checkpoint")).json()["error"] == \
        "session_not_found"
    resp = await client.put(f"{API}/sessions/{unknown}/checkpoint", json={"checkpoint": NOTE})
    assert resp.status_code == 404 and resp.json()["error"] == "session_not_found"
    assert (await client.get(f"{API}/sessions/nope/checkpoint")).status_code == 400
