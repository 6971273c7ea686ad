"""Hypothesis fuzzes the upload body through the real PATCH path of the running gateway.

schemathesis cannot generate `application/offset+octet-stream`, so the bodies, offsets,
checksums and content types of PATCH requests are drawn here.  A model (the bytes
accepted so far) predicts every answer: a request succeeds exactly when its offset is
the committed one, its content type is an upload type and its checksum (if any) is the
body's; otherwise it gets the documented 4xx and commits nothing.  Every status must be
one the OpenAPI document lists for the operation, never a 5xx, and the session's replay
must be byte-identical to the model.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.support import CHUNK, assert_error, create_session, finalize, replay

pytestmark = pytest.mark.e2e

UPLOAD_TYPES = ("application/offset+octet-stream", "application/octet-stream")


@dataclass(frozen=True)
class Attempt:
    body: bytes
    offset: str  # "ok" (the committed offset), a shift like "+3", or a raw header value
    checksum: str  # "none", "ok", "wrong", or a raw header value
    content_type: str | None


BODIES = st.one_of(
    st.binary(max_size=2048),
    st.binary(min_size=CHUNK - 2, max_size=CHUNK + 2),  # across the first chunk boundary
)
OFFSETS = st.one_of(st.just("ok"), st.just("ok"), st.sampled_from(["+1", "+4096"]),
                    st.sampled_from(["", "-1", "abc", "1.5", "0x10", "1" * 20, "99999999999"]))
CHECKSUMS = st.one_of(st.sampled_from(["none", "ok", "ok", "wrong"]),
                      st.sampled_from(["sha256", "sha256 !!!", "md5 AAAA", "sha256 AAAA",
                                       "sha256 " + "A" * 43 + "="]))
CONTENT_TYPES = st.one_of(st.sampled_from(UPLOAD_TYPES), st.sampled_from(UPLOAD_TYPES),
                          st.sampled_from([None, "application/json", "text/plain",
                                           "application/offset+octet-stream; charset=x"]))
ATTEMPTS = st.lists(st.builds(Attempt, BODIES, OFFSETS, CHECKSUMS, CONTENT_TYPES),
                    min_size=1, max_size=4)


def digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def headers_of(attempt: Attempt, committed: int) -> tuple[dict[str, str], bool]:
    """Return the request's headers and whether the model says it must be accepted."""
    headers: dict[str, str] = {}
    ok = True
    if attempt.offset == "ok":
        headers["Upload-Offset"] = str(committed)
    elif attempt.offset[:1] == "+":
        value = committed + int(attempt.offset)
        headers["Upload-Offset"] = str(value)
        ok = False
    else:
        headers["Upload-Offset"] = attempt.offset
        ok = False
    if attempt.checksum == "ok":
        headers["Upload-Checksum"] = "sha256 " + digest(attempt.body)
    elif attempt.checksum == "wrong":
        headers["Upload-Checksum"] = "sha256 " + digest(attempt.body + b"x")
        ok = False
    elif attempt.checksum != "none":
        headers["Upload-Checksum"] = attempt.checksum
        ok = ok and attempt.checksum == "sha256 " + digest(attempt.body)
    if attempt.content_type is not None:
        headers["Content-Type"] = attempt.content_type
    media = (attempt.content_type or "").split(";")[0].strip()
    return headers, ok and media in UPLOAD_TYPES


@pytest.fixture(scope="module")
def documented(api: httpx.Client) -> set[int]:
    """Return the statuses the gateway's OpenAPI document lists for PATCH .../upload."""
    spec: dict[str, Any] = httpx.get(api.base_url.join("/openapi.json"), trust_env=False).json()
    responses = spec["paths"]["/v1/sessions/{session_id}/upload"]["patch"]["responses"]
    return {int(code) for code in responses}


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(attempts=ATTEMPTS)
def test_fuzzed_uploads_get_documented_answers_and_replay_exactly(
        api: httpx.Client, documented: set[int], attempts: list[Attempt]) -> None:
    sid = create_session(api, {"suite": "upload-fuzz"})["id"]
    model = b""
    for attempt in attempts:
        headers, accept = headers_of(attempt, len(model))
        r = api.patch(f"/sessions/{sid}/upload", content=attempt.body, headers=headers)
        assert r.status_code < 500, (r.status_code, r.text[:300])
        assert r.status_code in documented, (r.status_code, r.text[:300], sorted(documented))
        if accept:
            assert r.status_code == 200, (attempt, r.status_code, r.text[:300])
            model += attempt.body
            assert r.json()["offset"] == len(model)
            assert r.headers["upload-offset"] == str(len(model))
        else:
            assert 400 <= r.status_code < 500, (attempt, r.status_code)
            body = assert_error(r, r.status_code, (
                "bad_request", "offset_mismatch", "unsupported_media_type",
                "checksum_mismatch", "invalid_parameter"))
            if body["error"] == "offset_mismatch":
                assert body["offset"] == len(model), body
    status = api.get(f"/sessions/{sid}/upload").json()
    assert status["offset"] == len(model), status
    finalize(api, sid)
    back = replay(api, sid)
    assert back.status_code == 200, back.status_code
    assert back.content == model
    assert api.delete(f"/sessions/{sid}").status_code == 204
