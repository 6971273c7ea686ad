"""Health, readiness and Prometheus metrics of each service."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e.conftest import SERVICES, Cluster
from tests.e2e.support import MIB, create_session, patch, recorded_session, session_bytes

pytestmark = pytest.mark.e2e


def _metrics(cluster: Cluster, name: str) -> str:
    r = httpx.get(cluster.url(name) + "/metrics", trust_env=False, timeout=10,
                  headers=cluster.auth_of(name))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def _samples(text: str, metric: str) -> dict[str, float]:
    """Return {label set: value} of every sample of `metric` (exact name) in an exposition."""
    out = {}
    # Greedy label set: route labels themselves contain braces ("/v1/sessions/{session_id}").
    for m in re.finditer(rf"^{re.escape(metric)}(\{{.*\}})?\s+(\S+)$", text, re.MULTILINE):
        out[m.group(1) or ""] = float(m.group(2))
    return out


@pytest.mark.parametrize("name", SERVICES)
def test_health_and_ready(cluster: Cluster, name: str) -> None:
    for path in ("/health", "/ready"):
        r = httpx.get(cluster.url(name) + path, trust_env=False, timeout=10)
        assert r.status_code == 200, (name, path, r.text)
        assert r.json()["status"] in ("ok", "ready")


def test_metrics(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(3 * MIB + 1, seed=120)
    sid = recorded_session(api, data, piece=len(data))["id"]
    create_session(api, {"case": "metrics-recording"})  # one session left recording
    assert api.get(f"/sessions/{sid}/replay").content == data

    texts = {name: _metrics(cluster, name) for name in SERVICES}
    for name, text in texts.items():
        assert "lucid_http_request_duration_seconds" in text, name
        # Route templates label the requests, never raw ids (which would explode the series).
        assert sid not in text, f"{name} metrics carry a session id"

    processor = texts["processor"]
    chunks_in = _samples(processor, "lucid_chunks_in_total")
    assert sum(chunks_in.values()) >= 4, chunks_in
    ratio = _samples(processor, "lucid_compression_ratio")
    assert ratio and all(v > 1.0 for v in ratio.values()), ratio  # the data is compressible

    storage = _samples(texts["storage"], "lucid_sessions")
    states = {re.search(r'state="([a-z]+)"', k).group(1): v  # type: ignore[union-attr]
              for k, v in storage.items()}
    assert states.get("completed", 0) >= 1 and states.get("recording", 0) >= 1, states

    api_text = texts["api"]
    requests = _samples(api_text, "lucid_http_request_duration_seconds_count")
    assert any('route="/v1/sessions/{session_id}/replay"' in k for k in requests), \
        list(requests)[:20]


def test_upload_bytes_are_counted(cluster: Cluster, api: httpx.Client) -> None:
    before = sum(_samples(_metrics(cluster, "processor"), "lucid_chunks_in_total").values())
    sid = create_session(api)["id"]
    assert patch(api, sid, 0, session_bytes(2 * MIB, seed=121)).status_code == 200
    after = sum(_samples(_metrics(cluster, "processor"), "lucid_chunks_in_total").values())
    assert after - before == 2
