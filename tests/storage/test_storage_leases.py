"""Writer leases with fencing tokens, on both metadata backends and over storage's HTTP API.

One writer per session across processes: a lease in the metadata store, taken by
compare-and-set, with an expiry (a crashed holder's session can be taken over) and a
fencing token that grows by one per acquire and is never reused.  Every write names
its token; a stale one is refused with 409 `lease_lost` and nothing of it is stored.
Times are passed to the store explicitly, so expiry is tested without waiting.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sessions.common.errors import InvalidParameter, LeaseLost, UploadInProgress
from sessions.common.states import SessionState
from sessions.storage.metastore import MetadataStore
from sessions.storage.records import ChunkRecord, NewSession, SessionRecord

pytestmark = pytest.mark.anyio
MakeSession = Callable[..., NewSession]
OpenStore = Callable[[], Awaitable[MetadataStore]]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = 30.0
API = "/internal/v1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def chunk(index: int, offset: int, tag: int) -> ChunkRecord:
    return ChunkRecord(index=index, offset=offset, length=10, sealed_length=50,
                       leaf_hash=bytes([tag]) * 32, compressed=False)


async def test_a_held_lease_is_refused_to_another_holder_until_it_expires(
        meta: MetadataStore, new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    first = await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))
    assert (first.lease_holder, first.lease_token) == ("a", 1)
    with pytest.raises(UploadInProgress) as refused:
        await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL - 1))
    assert refused.value.extra["lease_expires"] == first.lease_expires
    taken = await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL + 1))
    assert (taken.lease_holder, taken.lease_token) == ("b", 2)
    with pytest.raises(LeaseLost):  # a's lease is gone: it may not renew it
        await meta.renew_lease(sid, holder="a", token=1, ttl=TTL, now=at(TTL + 2))


async def test_a_stale_token_commits_nothing_after_a_takeover(
        meta: MetadataStore, new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    old = (await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))).lease_token
    await meta.commit_chunks(sid, expected_offset=0, chunks=[chunk(0, 0, 1)], lease_token=old)
    new = (await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL * 2))).lease_token
    assert new > old
    with pytest.raises(LeaseLost):
        await meta.commit_chunks(sid, expected_offset=10, chunks=[chunk(1, 10, 2)],
                                 lease_token=old)
    rec = await meta.get_session(sid)
    assert (rec.offset, rec.chunk_count) == (10, 1)
    assert [c.index for c in await meta.list_chunks(sid)] == [0]
    done = await meta.commit_chunks(sid, expected_offset=10, chunks=[chunk(1, 10, 3)],
                                    lease_token=new)
    assert done.chunk_count == 2
    assert (await meta.list_chunks(sid))[1].leaf_hash == bytes([3]) * 32


async def test_renewal_keeps_the_lease_past_its_first_expiry(
        meta: MetadataStore, new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    token = (await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))).lease_token
    renewed = await meta.renew_lease(sid, holder="a", token=token, ttl=TTL, now=at(TTL - 1))
    assert renewed.lease_token == token
    with pytest.raises(UploadInProgress):
        await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL + 1))
    with pytest.raises(LeaseLost):  # the right token under another name is still refused
        await meta.renew_lease(sid, holder="b", token=token, ttl=TTL, now=at(TTL + 1))


async def test_release_keeps_the_counter_and_fences_the_released_token(
        meta: MetadataStore, new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    token = (await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))).lease_token
    with pytest.raises(LeaseLost):  # a writer without a token may not write while leased
        await meta.commit_chunks(sid, expected_offset=0, chunks=[chunk(0, 0, 1)])
    unchanged = await meta.release_lease(sid, holder="a", token=token + 5)
    assert unchanged.lease_holder == "a"  # the wrong token releases nothing
    released = await meta.release_lease(sid, holder="a", token=token)
    assert (released.lease_holder, released.lease_expires, released.lease_token) == (
        None, None, token)
    assert await meta.release_lease(sid, holder="a", token=token) == released  # idempotent
    with pytest.raises(LeaseLost):
        await meta.commit_chunks(sid, expected_offset=0, chunks=[chunk(0, 0, 1)],
                                 lease_token=token)
    assert (await meta.get_session(sid)).chunk_count == 0
    # no lease held: a writer that takes none (the single-processor default) still commits
    assert (await meta.commit_chunks(sid, expected_offset=0,
                                     chunks=[chunk(0, 0, 1)])).chunk_count == 1
    again = await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(1))
    assert again.lease_token == token + 1


async def test_tokens_survive_a_restart_and_are_never_reused(
        open_store: OpenStore, new_session: MakeSession) -> None:
    first = await open_store()
    sid = (await first.create_session(new_session())).id
    seen = [(await first.acquire_lease(sid, holder=f"h{i}", ttl=TTL,
                                       now=at(i * 2 * TTL))).lease_token for i in range(3)]
    await first.close()
    second = await open_store()  # a new instance on the same database
    later = await second.acquire_lease(sid, holder="z", ttl=TTL, now=at(10 * TTL))
    assert seen == [1, 2, 3] and later.lease_token == 4


async def test_two_holders_racing_for_a_session_have_one_winner(
        open_store: OpenStore, new_session: MakeSession) -> None:
    a, b = await open_store(), await open_store()
    sid = (await a.create_session(new_session())).id

    async def take(store: MetadataStore, holder: str) -> object:
        try:
            return await store.acquire_lease(sid, holder=holder, ttl=TTL, now=at(0))
        except UploadInProgress as exc:
            return exc

    results = await asyncio.gather(*(take(s, f"p{i}") for i, s in
                                     enumerate((a, b, a, b, a, b))))
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    rec = await b.get_session(sid)
    assert rec.lease_token == 1 and rec.lease_holder == winners[0].lease_holder  # type: ignore[attr-defined]


async def test_lease_arguments_are_checked(meta: MetadataStore,
                                           new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    for holder, ttl in (("", TTL), ("a" * 65, TTL), ("a", 0.0), ("a", 10_000.0)):
        with pytest.raises(InvalidParameter):
            await meta.acquire_lease(sid, holder=holder, ttl=ttl, now=at(0))
    assert (await meta.get_session(sid)).lease_token == 0


# -- over HTTP (SQLite): the routes, and fencing of staging PUTs, commits and discards ---------


async def _session(client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]]) -> str:
    resp = await client.post(f"{API}/sessions", json=session_body())
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def _put(client: httpx.AsyncClient, sid: str, index: int, data: bytes, leaf: bytes,
               token: int | None) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", "X-Lucid-Leaf-Hash": leaf.hex()}
    if token is not None:
        headers["X-Lucid-Lease-Token"] = str(token)
    return await client.put(f"{API}/sessions/{sid}/chunks/{index}", content=data,
                            headers=headers)


async def test_http_leases_fence_puts_commits_and_discards(
        client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]],
        leaf_of: Callable[[bytes], bytes], error_body: Callable[..., dict[str, Any]]) -> None:
    sid = await _session(client, session_body)
    lease = f"{API}/sessions/{sid}/lease"
    a = await client.post(lease, json={"holder": "proc-a", "ttl_seconds": 0.2})
    assert a.status_code == 200, a.text
    assert a.json()["holder"] == "proc-a" and a.json()["token"] == 1
    busy = await client.post(lease, json={"holder": "proc-b", "ttl_seconds": 30})
    error_body(busy, 409, "upload_in_progress")
    data = os.urandom(300)
    assert (await _put(client, sid, 0, data, leaf_of(data), 1)).status_code == 201
    error_body(await _put(client, sid, 0, data, leaf_of(data), None), 409, "lease_lost")

    await asyncio.sleep(0.3)  # a's lease lapses; b takes the session over
    b = await client.post(lease, json={"holder": "proc-b", "ttl_seconds": 30})
    assert b.status_code == 200 and b.json()["token"] == 2
    other = os.urandom(300)
    assert (await _put(client, sid, 1, other, leaf_of(other), 2)).status_code == 201
    record = {"index": 0, "offset": 0, "length": 100, "sealed_length": len(data),
              "leaf_hash": leaf_of(data).hex(), "compressed": True}
    stale = await client.post(f"{API}/sessions/{sid}/commit",
                              json={"expected_offset": 0, "chunks": [record],
                                    "lease_token": 1})
    error_body(stale, 409, "lease_lost")
    error_body(await _put(client, sid, 2, data, leaf_of(data), 1), 409, "lease_lost")
    error_body(await client.delete(f"{API}/sessions/{sid}/staged", params={"lease_token": 1}),
               409, "lease_lost")
    renew = await client.post(f"{lease}/renew",
                              json={"holder": "proc-a", "token": 1, "ttl_seconds": 30})
    error_body(renew, 409, "lease_lost")
    assert (await client.get(f"{API}/sessions/{sid}")).json()["chunk_count"] == 0

    ok = await client.post(f"{API}/sessions/{sid}/commit",
                           json={"expected_offset": 0, "chunks": [record], "lease_token": 2})
    assert ok.status_code == 200 and ok.json()["chunk_count"] == 1, ok.text
    renewed = await client.post(f"{lease}/renew",
                                json={"holder": "proc-b", "token": 2, "ttl_seconds": 30})
    assert renewed.status_code == 200 and renewed.json()["token"] == 2
    gone = await client.post(f"{lease}/release", json={"holder": "proc-b", "token": 2})
    assert gone.status_code == 204
    again = await client.post(lease, json={"holder": "proc-a", "ttl_seconds": 30})
    assert again.status_code == 200 and again.json()["token"] == 3


async def test_http_lease_bodies_are_validated(
        client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]],
        error_body: Callable[..., dict[str, Any]]) -> None:
    sid = await _session(client, session_body)
    lease = f"{API}/sessions/{sid}/lease"
    for body in ({"holder": "", "ttl_seconds": 5}, {"holder": "a b", "ttl_seconds": 5},
                 {"holder": "a", "ttl_seconds": 0}, {"holder": "a", "ttl_seconds": 4000},
                 {"holder": "a"}):
        error_body(await client.post(lease, json=body), 422, "invalid_parameter")
    error_body(await client.post(f"{API}/sessions/01JDZ0Q3W6Y8E2V7K4N5P9R1ST/lease",
                                 json={"holder": "a", "ttl_seconds": 5}), 404, "session_not_found")
    bad = await client.put(f"{API}/sessions/{sid}/chunks/0", content=b"x", headers={
        "Content-Type": "application/octet-stream", "X-Lucid-Leaf-Hash": "0" * 64,
        "X-Lucid-Lease-Token": "-1"})
    error_body(bad, 400, "bad_request")


async def test_a_stale_token_cannot_move_the_kept_checkpoint(
        meta: MetadataStore, new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    old = (await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))).lease_token
    await meta.set_checkpoint(sid, "signed at 1", old)
    new = (await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL * 2))).lease_token
    await meta.set_checkpoint(sid, "signed at 2", new)
    with pytest.raises(LeaseLost):
        await meta.set_checkpoint(sid, "signed at 1 again", old)
    assert await meta.get_checkpoint(sid) == "signed at 2"


async def test_its_own_holder_takes_an_unexpired_lease_over_with_a_new_token(
        meta: MetadataStore, new_session: MakeSession) -> None:
    """A restarted processor (the same holder id, `lease.holder_identity`) need not wait for
    its dead predecessor's lease to lapse, yet the predecessor's token is fenced off."""
    sid = (await meta.create_session(new_session())).id
    old = (await meta.acquire_lease(sid, holder="node.a", ttl=TTL, now=at(0))).lease_token
    again = await meta.acquire_lease(sid, holder="node.a", ttl=TTL, now=at(1))
    assert (again.lease_holder, again.lease_token) == ("node.a", old + 1)
    with pytest.raises(LeaseLost):
        await meta.commit_chunks(sid, expected_offset=0, chunks=[chunk(0, 0, 1)],
                                 lease_token=old)
    with pytest.raises(LeaseLost):
        await meta.renew_lease(sid, holder="node.a", token=old, ttl=TTL, now=at(2))
    await meta.release_lease(sid, holder="node.a", token=old)  # the dead one's: a no-op
    assert (await meta.get_session(sid)).lease_holder == "node.a"
    with pytest.raises(UploadInProgress):  # another holder still waits for the expiry
        await meta.acquire_lease(sid, holder="node.b", ttl=TTL, now=at(2))


async def test_a_stale_token_can_neither_change_the_state_nor_finalize(
        meta: MetadataStore, new_session: MakeSession) -> None:
    sid = (await meta.create_session(new_session())).id
    old = (await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))).lease_token
    new = (await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL * 2))).lease_token
    with pytest.raises(LeaseLost):
        await meta.transition(sid, to=SessionState.FINALIZING, lease_token=old)
    assert (await meta.get_session(sid)).state is SessionState.RECORDING
    await meta.transition(sid, to=SessionState.FINALIZING, lease_token=new)
    root = bytes(32)
    with pytest.raises(LeaseLost):
        await meta.finalize(sid, root_hash=root, checkpoint="c", manifest=b"{}",
                            lease_token=old)
    assert (await meta.get_session(sid)).state is SessionState.FINALIZING
    done = await meta.finalize(sid, root_hash=root, checkpoint="c", manifest=b"{}",
                               lease_token=new)
    assert done.state is SessionState.COMPLETED


async def test_http_state_changes_carry_the_fencing_token(
        client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]],
        error_body: Callable[..., dict[str, Any]]) -> None:
    sid = await _session(client, session_body)
    lease = await client.post(f"{API}/sessions/{sid}/lease",
                              json={"holder": "proc-a", "ttl_seconds": 30})
    token = lease.json()["token"]
    state = f"{API}/sessions/{sid}/state"
    error_body(await client.post(state, json={"to": "finalizing", "lease_token": token + 1}),
               409, "lease_lost")
    ok = await client.post(state, json={"to": "finalizing", "lease_token": token})
    assert ok.status_code == 200 and ok.json()["state"] == "finalizing", ok.text
    stale = await client.post(f"{API}/sessions/{sid}/finalize", json={
        "root_hash": "00" * 32, "checkpoint": "c", "manifest": "{}", "lease_token": token + 1})
    error_body(stale, 409, "lease_lost")


# -- every write of a writer is fenced: the declared length, discards, finalize -----------------


async def test_a_stale_token_cannot_declare_the_upload_length(
        meta: MetadataStore, new_session: MakeSession) -> None:
    """A writer paused past its lease (tus `Upload-Length` in flight) declares nothing once
    another took over; the new writer's own declaration goes through."""
    sid = (await meta.create_session(new_session())).id
    old = (await meta.acquire_lease(sid, holder="a", ttl=TTL, now=at(0))).lease_token
    new = (await meta.acquire_lease(sid, holder="b", ttl=TTL, now=at(TTL * 2))).lease_token
    for token in (old, None):  # stale, and none while b holds the lease
        with pytest.raises(LeaseLost):
            await meta.set_upload_length(sid, 100, token)
    assert (await meta.get_session(sid)).upload_length is None
    assert (await meta.set_upload_length(sid, 50, new)).upload_length == 50
    with pytest.raises(LeaseLost):  # fenced before the once-rule: even the same value
        await meta.set_upload_length(sid, 50, old)
    await meta.release_lease(sid, holder="b", token=new)
    with pytest.raises(LeaseLost):  # a released token stays fenced
        await meta.set_upload_length(sid, 50, new)
    assert (await meta.set_upload_length(sid, 50)).upload_length == 50  # no lease: a no-op


async def test_racing_acquirers_get_distinct_tokens_and_one_holds(
        open_store: OpenStore, new_session: MakeSession) -> None:
    """The lease is a compare-and-set in the database (here on both backends, MongoDB
    included), never read-then-write: acquirers racing through separate clients (as
    separate storage processes) never share a token, and only the last token writes."""
    stores = [await open_store() for _ in range(3)]
    sid = (await stores[0].create_session(new_session())).id
    lapsed = (await stores[0].acquire_lease(sid, holder="dead", ttl=TTL, now=at(0))).lease_token

    async def take(store: MetadataStore, holder: str) -> object:
        try:
            return await store.acquire_lease(sid, holder=holder, ttl=TTL, now=at(TTL * 2))
        except UploadInProgress as exc:
            return exc

    # two processors take a lapsed lease over at once: one wins, with a new token
    results = await asyncio.gather(*(take(stores[i % 3], f"p{i}") for i in range(6)))
    won = [r for r in results if isinstance(r, SessionRecord)]
    assert [r.lease_token for r in won] == [lapsed + 1], results
    winners, holder = [lapsed + 1], won[0].lease_holder
    # the holder's own acquires racing (a restarted processor's): each gets its own token
    results = await asyncio.gather(*(take(stores[i % 3], str(holder)) for i in range(6)))
    tokens = sorted(r.lease_token for r in results if isinstance(r, SessionRecord))
    assert tokens == list(range(lapsed + 2, lapsed + 8)), results
    rec = await stores[1].get_session(sid)
    assert (rec.lease_token, rec.lease_holder) == (tokens[-1], holder)
    for token in (lapsed, *winners, *tokens[:-1]):
        with pytest.raises(LeaseLost):
            await stores[2].commit_chunks(sid, expected_offset=0, chunks=[chunk(0, 0, 1)],
                                          lease_token=token)
    done = await stores[2].commit_chunks(sid, expected_offset=0, chunks=[chunk(0, 0, 2)],
                                         lease_token=tokens[-1])
    assert done.chunk_count == 1


async def test_http_upload_length_discard_and_finalize_are_fenced(
        client: httpx.AsyncClient, session_body: Callable[..., dict[str, Any]],
        error_body: Callable[..., dict[str, Any]]) -> None:
    sid = await _session(client, session_body)
    lease = f"{API}/sessions/{sid}/lease"
    assert (await client.post(lease, json={"holder": "proc-a", "ttl_seconds": 0.2})
            ).status_code == 200
    await asyncio.sleep(0.3)  # a's lease lapses; b takes the session over
    b = await client.post(lease, json={"holder": "proc-b", "ttl_seconds": 30})
    assert b.json()["token"] == 2
    length = f"{API}/sessions/{sid}/upload-length"
    for stale in ({"lease_token": 1}, {}):
        error_body(await client.put(length, json={"upload_length": 10, **stale}),
                   409, "lease_lost")
        error_body(await client.delete(f"{API}/sessions/{sid}/staged",
                                       params=stale), 409, "lease_lost")
    assert (await client.get(f"{API}/sessions/{sid}")).json()["upload_length"] is None
    ok = await client.put(length, json={"upload_length": 10, "lease_token": 2})
    assert ok.status_code == 200 and ok.json()["upload_length"] == 10, ok.text
    error_body(await client.put(length, json={"upload_length": 10, "lease_token": 0}),
               422, "invalid_parameter")

    state = await client.post(f"{API}/sessions/{sid}/state",
                              json={"to": "finalizing", "lease_token": 2})
    assert state.status_code == 200, state.text
    final = {"root_hash": "00" * 32, "checkpoint": "c", "manifest": "{}"}
    error_body(await client.post(f"{API}/sessions/{sid}/finalize", json=final),
               409, "lease_lost")  # no token while b holds the lease
    assert (await client.get(f"{API}/sessions/{sid}")).json()["state"] == "finalizing"
    done = await client.post(f"{API}/sessions/{sid}/finalize", json={**final, "lease_token": 2})
    assert done.status_code == 200 and done.json()["state"] == "completed", done.text

    doc = (await client.get("/openapi.json")).json()
    route = doc["paths"][f"{API}/sessions/{{session_id}}/upload-length"]["put"]
    assert "409" in route["responses"] and "lease_lost" in route["description"]
    body = doc["components"]["schemas"]["UploadLengthIn"]["properties"]["lease_token"]
    assert "lease_lost" in str(body)
