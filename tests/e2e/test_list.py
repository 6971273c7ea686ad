"""Listing: label and state filters, and cursor paging that is stable and complete."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.e2e.support import create_session, finalize, patch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def population(api: httpx.Client) -> dict[str, object]:
    """Seven sessions of one run (label `run`), some alice's, some completed."""
    run = secrets.token_hex(6)
    users = ["alice", "bob", "alice", "carol", "alice", "bob", "alice"]
    ids = []
    completed = set()
    for i, user in enumerate(users):
        sid = create_session(api, {"run": run, "user": user, "host": f"ws-{i:02d}"})["id"]
        ids.append(sid)
        if i % 3 == 0:
            assert patch(api, sid, 0, f"session {i}".encode()).status_code == 200
            finalize(api, sid)
            completed.add(sid)
    return {"run": run, "ids": ids, "users": dict(zip(ids, users, strict=True)),
            "completed": completed}


def _all_pages(api: httpx.Client, params: dict[str, object], limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        query = dict(params) | {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = api.get("/sessions", params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("paging never ended")


def test_label_filter(api: httpx.Client, population: dict[str, object]) -> None:
    run, users = population["run"], population["users"]
    assert isinstance(users, dict)
    r = api.get("/sessions", params=[("label", f"run:{run}"), ("label", "user:alice")])
    assert r.status_code == 200
    items = r.json()["items"]
    assert {s["id"] for s in items} == {sid for sid, u in users.items() if u == "alice"}
    assert all(s["labels"]["user"] == "alice" for s in items)
    assert all("wrapped_key" not in s for s in items)
    # A label value nobody has.
    r = api.get("/sessions", params=[("label", f"run:{run}"), ("label", "user:mallory")])
    assert r.json() == {"items": [], "next_cursor": None}


def test_state_filter(api: httpx.Client, population: dict[str, object]) -> None:
    run = population["run"]
    done = _all_pages(api, {"label": f"run:{run}", "state": "completed"}, limit=50)
    assert set(done) == population["completed"]
    recording = _all_pages(api, {"label": f"run:{run}", "state": "recording"}, limit=50)
    assert set(recording) == set(population["ids"]) - population["completed"]  # type: ignore


def test_paging_is_stable_complete_and_newest_first(api: httpx.Client,
                                                    population: dict[str, object]) -> None:
    run, ids = population["run"], population["ids"]
    assert isinstance(ids, list)
    one_page = _all_pages(api, {"label": f"run:{run}"}, limit=500)
    assert len(one_page) == len(set(one_page)) == len(ids)
    assert set(one_page) == set(ids)
    assert one_page == sorted(ids, reverse=True)  # ids are time-ordered: newest first
    paged = _all_pages(api, {"label": f"run:{run}"}, limit=2)
    assert paged == one_page
    assert _all_pages(api, {"label": f"run:{run}"}, limit=2) == paged  # stable across calls
    alices = [sid for sid in one_page if population["users"][sid] == "alice"]  # type: ignore
    assert _all_pages(api, {"label": [f"run:{run}", "user:alice"]}, limit=3) == alices


def test_paging_over_everything_has_no_duplicates(api: httpx.Client,
                                                  population: dict[str, object]) -> None:
    everything = _all_pages(api, {}, limit=7)
    assert len(everything) == len(set(everything))
    assert set(population["ids"]) <= set(everything)  # type: ignore[arg-type]


def test_unicode_label_values_round_trip_and_filter(api: httpx.Client) -> None:
    run = secrets.token_hex(6)
    title = "Zoë's desk ✓ / 东京, 50% = ok"
    sid = create_session(api, {"run": run, "title": title})["id"]
    assert api.get(f"/sessions/{sid}").json()["labels"]["title"] == title
    r = api.get("/sessions", params=[("label", f"run:{run}"), ("label", f"title:{title}")])
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["items"]] == [sid]
    r = api.get("/sessions", params=[("label", f"run:{run}"), ("label", "title:Zoë")])
    assert r.json()["items"] == []  # exact match only, no prefix or LIKE matching
    r = api.get("/sessions", params=[("label", f"run:{run}"), ("label", "title:%")])
    assert r.json()["items"] == []
