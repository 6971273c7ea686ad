"""The three OpenAPI documents as served, and the behaviours they document (issue 12).

Covers: one `ErrorBody` for every error status (no FastAPI `HTTPValidationError`),
constrained parameters (session id pattern, every integer bounded), `/metrics` as
Prometheus text, out-of-range numbers refused with 422 instead of a 500 (defect 4),
the `Allow` header of a 405, what a deleted session answers, and the docs pages
served with no CDN (defect 9).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from sessions.client.launcher import SERVICES
from tests.e2e.conftest import Cluster
from tests.e2e.support import assert_error, create_session, recorded_session

pytestmark = pytest.mark.e2e

HUGE = 2**63  # past SQLite's INTEGER: was an OverflowError and a 500 (defect 4)


def spec_of(cluster: Cluster, service: str) -> dict[str, Any]:
    r = httpx.get(cluster.url(service) + "/openapi.json", trust_env=False)
    if service != "api":  # internal: only /health and /ready answer without the service token
        assert r.status_code == 401
        r = httpx.get(cluster.url(service) + "/openapi.json", trust_env=False,
                      headers=cluster.auth_of(service))
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items()
            for method, op in item.items() if isinstance(op, dict) and "responses" in op]


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_status_documents_the_one_error_body(cluster: Cluster,
                                                         service: str) -> None:
    spec = spec_of(cluster, service)
    assert "HTTPValidationError" not in str(spec)
    assert set(spec["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "detail"}
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method)
        assert "500" in op["responses"], (path, method)
        if "{session_id}" in path:
            assert "400" in op["responses"], (path, method)  # invalid_id


@pytest.mark.parametrize("service", SERVICES)
def test_parameters_carry_the_constraints_the_server_enforces(cluster: Cluster,
                                                              service: str) -> None:
    for path, method, op in operations(spec_of(cluster, service)):
        for param in op.get("parameters", ()):
            schema = param["schema"]
            if param["name"] in ("session_id", "cursor"):
                assert schema["pattern"] == "^[0-7][0-9A-HJKMNP-TV-Z]{25}$", (path, param)
            if schema.get("type") == "integer":
                assert "maximum" in schema and "minimum" in schema, (path, method, param)
            assert "anyOf" not in schema, (path, param)  # a query is absent, never null


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_are_documented_as_prometheus_text(cluster: Cluster, service: str) -> None:
    op = spec_of(cluster, service)["paths"]["/metrics"]["get"]
    assert list(op["responses"]["200"]["content"]) == ["text/plain"]
    assert httpx.get(cluster.url(service) + "/metrics", trust_env=False).status_code == 401
    r = httpx.get(cluster.url(service) + "/metrics", trust_env=False,
                  headers=cluster.auth_of(service))
    assert r.headers["content-type"].startswith("text/plain")


def test_internal_operations_document_the_service_token(cluster: Cluster) -> None:
    for service in ("processor", "storage"):
        spec = spec_of(cluster, service)
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, _, op in operations(spec):
            if path.startswith("/internal/"):
                assert op["security"] == [{"bearer": []}] and "401" in op["responses"], path


# -- defect 4: numbers out of range ------------------------------------------------------------

@pytest.fixture(scope="module")
def done_sid(api: httpx.Client) -> str:
    return str(recorded_session(api, b"x" * 5000, labels={"suite": "contract"})["id"])


@pytest.mark.parametrize(("service", "path"), [
    ("storage", "/internal/v1/sessions/{sid}/chunks?start={n}"),
    ("storage", "/internal/v1/sessions/{sid}/leaves?size={n}"),
    ("storage", "/internal/v1/sessions/{sid}/chunks/{n}"),
    ("processor", "/internal/v1/sessions/{sid}/chunks/{n}"),
    ("processor", "/internal/v1/sessions/{sid}/checkpoint?size={n}"),
    ("processor", "/internal/v1/sessions/{sid}/proof/inclusion?index={n}"),
    ("processor", "/internal/v1/sessions/{sid}/proof/consistency?from=0&to={n}"),
    ("api", "/v1/sessions/{sid}/chunks/{n}"),
    ("api", "/v1/sessions/{sid}/checkpoint?size={n}"),
    ("api", "/v1/sessions/{sid}/proof/inclusion?index={n}"),
    ("api", "/v1/sessions/{sid}/proof/consistency?from={n}"),
    ("api", "/v1/sessions?limit={n}"),
])
@pytest.mark.parametrize("n", [HUGE, 10**40, 10_000_000_001])
def test_out_of_range_numbers_are_422_not_500(cluster: Cluster, done_sid: str, service: str,
                                             path: str, n: int) -> None:
    token = cluster.admin_token if service == "api" else cluster.secret("service.token")
    r = httpx.get(cluster.url(service) + path.format(sid=done_sid, n=n), trust_env=False,
                  headers={"Authorization": f"Bearer {token}"})
    assert_error(r, 422, "invalid_parameter")


# -- statuses ------------------------------------------------------------------------------------

def test_a_405_names_every_method_of_the_resource(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    r = api.put(f"/sessions/{sid}")
    assert_error(r, 405, "method_not_allowed")
    assert set(re.split(r",\s*", r.headers["allow"])) == {"DELETE", "GET"}


def test_malformed_json_is_a_documented_400(cluster: Cluster, api: httpx.Client) -> None:
    r = api.post("/sessions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422)
    code = str(r.status_code)
    assert code in spec_of(cluster, "api")["paths"]["/v1/sessions"]["post"]["responses"]


def test_delete_of_an_unknown_session_is_a_documented_404(cluster: Cluster,
                                                          api: httpx.Client) -> None:
    unknown = "0" * 26
    assert_error(api.delete(f"/sessions/{unknown}"), 404, "session_not_found")
    op = spec_of(cluster, "api")["paths"]["/v1/sessions/{session_id}"]["delete"]
    assert "404" in op["responses"]


def test_a_deleted_session_is_a_tombstone_and_nothing_else(api: httpx.Client) -> None:
    """GET shows `state: deleted`; every sub-resource is 409 `invalid_state`; DELETE is 204."""
    sid = recorded_session(api, b"y" * 3000)["id"]
    assert api.delete(f"/sessions/{sid}").status_code == 204
    tomb = api.get(f"/sessions/{sid}")
    assert tomb.status_code == 200 and tomb.json()["state"] == "deleted"
    for method, sub in [("GET", "/manifest"), ("GET", "/checkpoint"), ("GET", "/replay"),
                        ("GET", "/chunks/0"), ("GET", "/upload"), ("POST", "/finalize"),
                        ("POST", "/verify"), ("GET", "/proof/inclusion?index=0")]:
        assert_error(api.request(method, f"/sessions/{sid}{sub}"), 409, "invalid_state")
    head = api.head(f"/sessions/{sid}/upload")
    assert head.status_code == 409
    assert api.delete(f"/sessions/{sid}").status_code == 204


def test_the_manifest_of_a_recording_session_is_409_not_404(api: httpx.Client) -> None:
    sid = create_session(api)["id"]
    assert_error(api.get(f"/sessions/{sid}/manifest"), 409, "invalid_state")


# -- defect 9: docs pages without a CDN ----------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(cluster: Cluster, service: str, page: str) -> None:
    base = cluster.url(service)
    # the gateway's docs are public; the internal services' need the service token
    headers = {} if service == "api" else cluster.auth_of(service)
    r = httpx.get(base + page, trust_env=False, headers=headers)
    assert r.status_code == 200
    assert "http://" not in r.text.replace(base, "") and "https://" not in r.text, r.text
    links = _Links()
    links.feed(r.text)
    scripts = [u for u in links.urls if u.endswith(".js")]
    assert scripts, r.text
    for url in links.urls:
        assert url.startswith("/"), url
        asset = httpx.get(base + url, trust_env=False, headers=headers)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert "/openapi.json" in r.text
