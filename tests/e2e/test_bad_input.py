"""Bad requests get a clear 4xx JSON error body: never a 500, never a traceback."""

from __future__ import annotations

import httpx
import pytest

from sessions.common.ids import new_session_id
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    MAX_UPLOAD,
    UPLOAD_TYPE,
    assert_error,
    create_session,
    finalize,
    head_offset,
    patch,
    raw,
)

pytestmark = pytest.mark.e2e

BAD_IDS = {
    "dotdot": "%2E%2E",
    "too-short": "01ABC",
    "lowercase-garbage": "abcdefghijklmnopqrstuvwxyz",
    "excluded-letter-U": "0" * 25 + "U",
    "first-char-above-7": "8" + "0" * 25,
    "too-long": "0" * 27,
    "quote": "0" * 25 + "%27",
}

# Every per-session route, with a body where it needs one.
ROUTES = [
    ("GET", "{}", None),
    ("DELETE", "{}", None),
    ("GET", "{}/upload", None),
    ("HEAD", "{}/upload", None),
    ("PATCH", "{}/upload", b"abc"),
    ("POST", "{}/finalize", None),
    ("GET", "{}/manifest", None),
    ("GET", "{}/checkpoint", None),
    ("GET", "{}/proof/inclusion?index=0", None),
    ("GET", "{}/proof/consistency?from=0&to=0", None),
    ("GET", "{}/chunks/0", None),
    ("GET", "{}/replay", None),
    ("POST", "{}/verify", None),
]


def _call(cluster: Cluster, method: str, path: str, body: bytes | None, *,
          auth: bool = True, token: str | None = None) -> httpx.Response:
    headers = {"Upload-Offset": "0", "Content-Type": UPLOAD_TYPE} if method == "PATCH" else {}
    with cluster.client(auth=auth, token=token) as client:
        return client.request(method, "/sessions/" + path, content=body, headers=headers)


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_malformed_ids(cluster: Cluster, bad: str) -> None:
    auth = {"Authorization": f"Bearer {cluster.admin_token}"}
    for method, template, body in ROUTES:
        headers = dict(auth)
        if method == "PATCH":
            headers |= {"Upload-Offset": "0", "Content-Type": UPLOAD_TYPE}
        # Raw socket: the path reaches the server exactly as written (no client normalisation).
        r = raw(cluster.ports["api"], method, "/v1/sessions/" + template.format(bad), headers,
                body or b"")
        if method == "HEAD":
            assert r.status_code == 400, (method, template, r.status_code)
            continue
        assert_error(r, 400, "invalid_id")


def test_path_traversal_never_reaches_a_session(cluster: Cluster) -> None:
    auth = {"Authorization": f"Bearer {cluster.admin_token}"}
    for path in ["/v1/sessions/..%2Fetc", "/v1/sessions/..%2F..%2Fsecrets%2Fadmin.token",
                 "/v1/sessions/%2E%2E%2Fetc/replay"]:
        r = raw(cluster.ports["api"], "GET", path, auth)
        # Either the id is rejected or no route matches; never a file, never a 500.
        assert r.status_code in (400, 404), (path, r.status_code, r.text[:300])
        assert_error(r, r.status_code, ("invalid_id", "not_found"))


@pytest.mark.parametrize("method,template,body", ROUTES, ids=[f"{m} {t}" for m, t, _ in ROUTES])
def test_unknown_session(cluster: Cluster, method: str, template: str, body: bytes | None
                         ) -> None:
    sid = new_session_id()
    r = _call(cluster, method, template.format(sid), body)
    if method == "DELETE":  # idempotent: deleting what is not there may succeed
        assert r.status_code in (204, 404), r.status_code
        if r.status_code == 404:
            assert_error(r, 404, "session_not_found")
        return
    if method == "HEAD":
        assert r.status_code == 404
        return
    # A chunk of an unknown session is, fairly, also an unknown chunk.
    codes = ("session_not_found", "chunk_not_found") if "chunks" in template else \
        "session_not_found"
    assert_error(r, 404, codes)


@pytest.mark.parametrize("method,template,body", ROUTES, ids=[f"{m} {t}" for m, t, _ in ROUTES])
@pytest.mark.parametrize("token", [None, "wrong-" + "x" * 40])
def test_missing_or_wrong_token(cluster: Cluster, method: str, template: str,
                                body: bytes | None, token: str | None) -> None:
    r = _call(cluster, method, template.format(new_session_id()), body, auth=token is not None,
              token=token)
    if method == "HEAD":
        assert r.status_code == 401
    else:
        assert_error(r, 401, "unauthorized")
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_token_is_required_on_listing_and_creating(cluster: Cluster) -> None:
    with cluster.client(auth=False) as anon:
        assert_error(anon.get("/sessions"), 401, "unauthorized")
        assert_error(anon.post("/sessions", json={}), 401, "unauthorized")
    r = httpx.get(cluster.url("api") + "/v1/sessions", trust_env=False,
                  headers={"Authorization": f"Basic {cluster.admin_token}"})
    assert_error(r, 401, "unauthorized")


def test_offset_mismatch_reports_the_real_offset(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, b"x" * 1000).status_code == 200
    for wrong in (0, 999, 1001, 10**12):
        body = assert_error(patch(api, sid, wrong, b"yyyy"), 409, "offset_mismatch")
        assert body["offset"] == 1000
    assert head_offset(api, sid) == 1000


@pytest.mark.parametrize("value", [None, "", "-1", "abc", "1.5", "0x10", "1" * 25])
def test_bad_upload_offset_header(api: httpx.Client, value: str | None) -> None:
    sid = create_session(api)["id"]
    headers = {"Content-Type": UPLOAD_TYPE}
    if value is not None:
        headers["Upload-Offset"] = value
    r = api.patch(f"/sessions/{sid}/upload", content=b"abc", headers=headers)
    assert_error(r, 400, "bad_request")
    assert head_offset(api, sid) == 0


@pytest.mark.parametrize("ctype", [None, "application/json", "text/plain",
                                   "multipart/form-data; boundary=x"])
def test_wrong_content_type(api: httpx.Client, ctype: str | None) -> None:
    sid = create_session(api)["id"]
    headers = {"Upload-Offset": "0"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    r = api.patch(f"/sessions/{sid}/upload", content=b"abc", headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert head_offset(api, sid) == 0


def test_plain_octet_stream_is_accepted(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    r = patch(api, sid, 0, b"abc", content_type="application/octet-stream")
    assert r.status_code == 200 and r.json()["offset"] == 3


def test_oversized_declared_length(cluster: Cluster, api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    req = cluster.open_upload(sid, length=MAX_UPLOAD + 1, timeout=15)
    try:
        req.send(b"z" * 4096)  # the rest never comes: the answer must not wait for it
        answer = req.response()
    finally:
        req.close()
    assert_error(answer, 413, "payload_too_large")
    assert head_offset(api, sid) == 0


def test_upload_after_finalize(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, b"abc").status_code == 200
    finalize(api, sid)
    assert_error(patch(api, sid, 3, b"more"), 409, "invalid_state")
    assert head_offset(api, sid) == 3


@pytest.mark.parametrize("params,code", [
    ({"label": "nocolon"}, "invalid_parameter"),
    ({"label": "Upper:x"}, "invalid_parameter"),
    ({"label": ":value"}, "invalid_parameter"),
    ({"state": "bogus"}, "invalid_parameter"),
    ({"limit": "0"}, "invalid_parameter"),
    ({"limit": "501"}, "invalid_parameter"),
    ({"limit": "ten"}, "invalid_parameter"),
    ({"cursor": "not-an-id"}, ("invalid_parameter", "invalid_id")),
])
def test_bad_list_filters(api: httpx.Client, params: dict[str, str],
                          code: str | tuple[str, ...]) -> None:
    r = api.get("/sessions", params=params)
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert_error(r, r.status_code, code)


@pytest.mark.parametrize("body", [
    {"labels": {"Bad Key": "x"}},
    {"labels": {"user": "x" * 257}},
    {"labels": {f"k{i}": "v" for i in range(33)}},
    {"labels": {"user": 5}},
    {"retention_days": 0},
    {"retention_days": 36501},
    {"retention_days": "forever"},
    {"labels": {}, "wrapped_key": {"key_id": "0" * 16, "blob": "AAAA"}},
    {"id": "01JDZ0Q3W6Y8E2V7K4N5P9R1ST"},
    [],
])
def test_bad_create_body(api: httpx.Client, body: object) -> None:
    assert_error(api.post("/sessions", json=body), 422, "invalid_parameter")


def test_create_body_not_json(api: httpx.Client) -> None:
    r = api.post("/sessions", content=b"{labels", headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.status_code
    assert_error(r, r.status_code, ("invalid_parameter", "bad_request"))


def test_create_body_too_large(api: httpx.Client) -> None:
    r = api.post("/sessions", content=b'{"labels": {"a": "' + b"x" * (200 * 1024) + b'"}}',
                 headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_unknown_route_and_method(api: httpx.Client) -> None:
    assert_error(api.get("/nothing-here"), 404, "not_found")
    assert_error(api.put("/sessions"), 405, "method_not_allowed")


def test_chunk_index_out_of_range(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, b"abc").status_code == 200
    r = api.get(f"/sessions/{sid}/chunks/1")
    assert_error(r, 404, "chunk_not_found")
    assert_error(api.get(f"/sessions/{sid}/chunks/-1"), 422, "invalid_parameter")
    assert_error(api.get(f"/sessions/{sid}/chunks/abc"), 422, "invalid_parameter")


def test_manifest_before_completion(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    r = api.get(f"/sessions/{sid}/manifest")
    assert r.status_code in (404, 409), r.status_code
    assert_error(r, r.status_code, ("not_found", "invalid_state"))
