"""tus 1.0.0 on the real services, request by request: every MUST of docs/tus.md.

Each test speaks raw tus over httpx to the gateway of the e2e cluster, and looks
behind it (JSON API, storage) where a rule is about what was or was not stored.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import CHUNK, session_bytes

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}
UPPY_METADATA = {"relativePath": "null", "name": "desk.rec", "type": "video/x-lucid",
                 "filetype": "video/x-lucid", "filename": "desk.rec"}
IDLE_DEADLINE = 86400  # the gateway's default LUCID_IDLE_DEADLINE


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def metadata(pairs: dict[str, str]) -> str:
    return ",".join(f"{k} {b64(v.encode())}" for k, v in pairs.items())


def create(api: httpx.Client, length: int | None, **headers: str) -> str:
    """Return the upload URL path of a new tus upload (Upload-Defer-Length when length is None)."""
    declared = {"Upload-Defer-Length": "1"} if length is None else {"Upload-Length": str(length)}
    r = api.post("sessions", headers={**TUS, **declared, **headers})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    assert location.startswith("/v1/sessions/") and location.endswith("/upload")
    return location


def sid_of(location: str) -> str:
    return location.split("/")[3]


def patch(cluster: Cluster, location: str, offset: int, data: bytes | Iterator[bytes],
          **headers: str) -> httpx.Response:
    with cluster.client(base="") as c:
        return c.patch(location, content=data, headers={**TUS, **STREAM,
                                                        "Upload-Offset": str(offset), **headers})


def head(cluster: Cluster, location: str) -> httpx.Response:
    with cluster.client(base="") as c:
        return c.head(location, headers=TUS)


def state(api: httpx.Client, sid: str) -> dict[str, object]:
    r = api.get(f"sessions/{sid}")
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def expiry(value: str) -> datetime:
    moment = parsedate_to_datetime(value)
    assert value.endswith(" GMT") and moment.tzinfo is not None  # RFC 9110 IMF-fixdate
    return moment


# -- core protocol -------------------------------------------------------------------------------

def test_options_discovery_lists_version_extensions_max_size_and_algorithms(
        cluster: Cluster) -> None:
    with cluster.client(auth=False, base="") as c:  # discovery needs no token
        for path in ("/v1/sessions", "/v1/sessions/01JDZ0Q3W6Y8E2V7K4N5P9R1ST/upload"):
            r = c.options(path, headers={"Tus-Resumable": "0.2.2"})  # MUST be ignored
            assert r.status_code == 204, r.text
            assert r.headers["tus-version"] == "1.0.0"
            assert r.headers["tus-resumable"] == "1.0.0"
            assert set(r.headers["tus-extension"].split(",")) == {
                "creation", "creation-defer-length", "creation-with-upload", "checksum",
                "termination", "expiration"}
            assert int(r.headers["tus-max-size"]) > 0
            assert {"sha1", "sha256"} <= set(r.headers["tus-checksum-algorithm"].split(","))
            assert r.headers["lucid-chunk-size"] == str(CHUNK)
            assert r.content == b""


def test_every_tus_response_carries_tus_resumable_even_errors(cluster: Cluster,
                                                              api: httpx.Client) -> None:
    location = create(api, 10)
    missing = "/v1/sessions/01JDZ0Q3W6Y8E2V7K4N5P9R1ST/upload"
    with cluster.client(base="") as c, cluster.client(auth=False, base="") as anon:
        answers = [
            c.head(location, headers=TUS),
            c.patch(location, content=b"abc", headers={**TUS, **STREAM, "Upload-Offset": "0"}),
            c.patch(location, content=b"x", headers={**TUS, **STREAM, "Upload-Offset": "0"}),
            c.head(missing, headers=TUS),
            anon.head(location, headers=TUS),
            c.post("/v1/sessions", headers=TUS),  # no length: 400
        ]
    assert [r.status_code for r in answers] == [200, 204, 409, 404, 401, 400]
    for r in answers:
        assert r.headers.get("tus-resumable") == "1.0.0", r.status_code


def test_json_api_responses_do_not_speak_tus(cluster: Cluster, api: httpx.Client) -> None:
    r = api.post("sessions", json={})
    assert r.status_code == 201 and "location" not in r.headers
    assert "tus-resumable" not in r.headers and r.json()["upload_length"] is None
    sid = r.json()["id"]
    r = api.patch(f"sessions/{sid}/upload", content=b"abc",
                  headers={**STREAM, "Upload-Offset": "0"})
    assert r.status_code == 200 and r.json() == {"offset": 3, "chunk_count": 1}
    assert "tus-resumable" not in r.headers


def test_an_unsupported_version_is_412_with_tus_version_and_not_processed(
        cluster: Cluster, api: httpx.Client) -> None:
    tag = f"v{datetime.now(UTC).timestamp():.6f}".replace(".", "-")
    r = api.post("sessions", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5",
                                      "Upload-Metadata": metadata({"probe": tag})})
    assert r.status_code == 412
    assert r.headers["tus-version"] == "1.0.0"
    assert r.json()["error"] == "tus_version_unsupported"
    assert api.get("sessions", params={"label": f"probe:{tag}"}).json()["items"] == []
    location = create(api, 5)
    r = patch(cluster, location, 0, b"hello", **{"Tus-Resumable": "2.0.0"})
    assert r.status_code == 412 and r.headers["tus-version"] == "1.0.0"
    assert state(api, sid_of(location))["offset"] == 0


def test_head_gives_offset_and_length_and_forbids_caching(cluster: Cluster,
                                                          api: httpx.Client) -> None:
    location = create(api, 3 * CHUNK)
    r = head(cluster, location)
    assert r.status_code == 200
    assert r.headers["upload-offset"] == "0"
    assert r.headers["upload-length"] == str(3 * CHUNK)
    assert "upload-defer-length" not in r.headers
    assert r.headers["cache-control"] == "no-store"
    assert patch(cluster, location, 0, session_bytes(CHUNK, 1)).status_code == 204
    assert head(cluster, location).headers["upload-offset"] == str(CHUNK)


def test_head_of_an_unknown_upload_is_404_without_an_offset(cluster: Cluster) -> None:
    r = head(cluster, "/v1/sessions/01JDZ0Q3W6Y8E2V7K4N5P9R1ST/upload")
    assert r.status_code == 404 and "upload-offset" not in r.headers


def test_patch_answers_204_with_the_new_offset_and_no_body(cluster: Cluster,
                                                           api: httpx.Client) -> None:
    location = create(api, 2 * CHUNK + 7)
    data = session_bytes(2 * CHUNK + 7, 2)
    r = patch(cluster, location, 0, data[:CHUNK])
    assert (r.status_code, r.headers["upload-offset"], r.content) == (204, str(CHUNK), b"")
    r = patch(cluster, location, CHUNK, data[CHUNK:])
    assert (r.status_code, r.headers["upload-offset"]) == (204, str(len(data)))


def test_patch_without_the_offset_stream_type_is_415(cluster: Cluster, api: httpx.Client) -> None:
    location = create(api, 5)
    for ctype in ("application/octet-stream", "text/plain"):
        r = patch(cluster, location, 0, b"hello", **{"Content-Type": ctype})
        assert r.status_code == 415, ctype
    assert state(api, sid_of(location))["offset"] == 0


def test_patch_at_a_wrong_offset_is_409_and_changes_nothing(cluster: Cluster,
                                                            api: httpx.Client) -> None:
    location = create(api, 10)
    assert patch(cluster, location, 0, b"hello").status_code == 204
    for wrong in (0, 3, 6):
        r = patch(cluster, location, wrong, b"world")
        assert r.status_code == 409 and r.json()["error"] == "offset_mismatch"
    assert state(api, sid_of(location))["offset"] == 5


def test_patch_without_an_offset_is_400(cluster: Cluster, api: httpx.Client) -> None:
    location = create(api, 5)
    with cluster.client(base="") as c:
        r = c.patch(location, content=b"hello", headers={**TUS, **STREAM})
    assert r.status_code == 400


def test_method_override_header_is_the_method(cluster: Cluster, api: httpx.Client) -> None:
    location = create(api, 5)
    with cluster.client(base="") as c:
        r = c.post(location, content=b"hello", headers={
            **TUS, **STREAM, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    assert r.status_code == 204 and r.headers["upload-offset"] == "5"


# -- creation ------------------------------------------------------------------------------------

def test_creation_answers_201_with_a_location_that_accepts_the_core_protocol(
        cluster: Cluster, api: httpx.Client) -> None:
    r = api.post("sessions", headers={**TUS, "Upload-Length": "11"})
    assert r.status_code == 201
    location = r.headers["location"]
    assert patch(cluster, location, 0, b"hello world").status_code == 204
    assert state(api, sid_of(location))["upload_length"] == 11


@pytest.mark.parametrize("headers", [
    {}, {"Upload-Defer-Length": "2"}, {"Upload-Length": "-1"}, {"Upload-Length": "ten"},
    {"Upload-Length": "5", "Upload-Defer-Length": "1"},
], ids=["none", "defer-2", "negative", "not-a-number", "both"])
def test_creation_needs_exactly_one_valid_length_header(api: httpx.Client,
                                                        headers: dict[str, str]) -> None:
    r = api.post("sessions", headers={**TUS, **headers})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_creation_past_the_max_size_is_413(cluster: Cluster, api: httpx.Client) -> None:
    with cluster.client(auth=False, base="") as c:
        max_size = int(c.options("/v1/sessions").headers["tus-max-size"])
    r = api.post("sessions", headers={**TUS, "Upload-Length": str(max_size + 1)})
    assert r.status_code == 413


def test_uppy_default_metadata_becomes_labels_and_comes_back_on_head(
        cluster: Cluster, api: httpx.Client) -> None:
    location = create(api, 5, **{"Upload-Metadata": metadata(UPPY_METADATA) + ",is_confidential"})
    labels = state(api, sid_of(location))["labels"]
    assert labels == {"relative_path": "null", "name": "desk.rec", "type": "video/x-lucid",
                      "filetype": "video/x-lucid", "filename": "desk.rec",
                      "is_confidential": ""}
    echoed = head(cluster, location).headers["upload-metadata"]
    pairs = dict((p.split(" ") + [""])[:2] for p in echoed.split(","))
    assert {k: base64.b64decode(v).decode() for k, v in pairs.items()} == labels


@pytest.mark.parametrize("value", [
    "bad key " + b64(b"x"), "Ünicode " + b64(b"x"), "na:me " + b64(b"x"), "name !!notbase64",
    "name " + b64(b"\xff"),
    "name " + b64(b"a" * 257), "name " + b64(b"a\nb"), "name " + b64(b"a") + ",name " + b64(b"b"),
], ids=["space-in-key", "non-ascii-key", "colon-in-key", "not-base64", "not-utf8", "long-value",
        "control-char", "repeated-key"])
def test_metadata_that_cannot_be_labels_is_refused(api: httpx.Client, value: str) -> None:
    r = api.post("sessions", headers={**TUS, "Upload-Length": "5",
                                      "Upload-Metadata": value.encode("utf-8")})
    assert r.status_code == 400 and "Upload-Metadata" in r.json()["detail"]


def test_an_empty_upload_is_complete_at_creation(api: httpx.Client) -> None:
    location = create(api, 0)
    body = state(api, sid_of(location))
    assert body["state"] == "completed" and body["offset"] == 0
    assert api.get(f"sessions/{sid_of(location)}/manifest").status_code == 200


# -- creation-defer-length ------------------------------------------------------------------------

def test_a_deferred_length_is_declared_once_by_a_later_patch(cluster: Cluster,
                                                            api: httpx.Client) -> None:
    location = create(api, None)
    sid = sid_of(location)
    data = session_bytes(2 * CHUNK + 100, 3)
    r = head(cluster, location)
    assert r.headers["upload-defer-length"] == "1" and "upload-length" not in r.headers
    assert patch(cluster, location, 0, data[:CHUNK]).status_code == 204
    assert head(cluster, location).headers["upload-defer-length"] == "1"
    r = patch(cluster, location, CHUNK, data[CHUNK:2 * CHUNK],
              **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    r = head(cluster, location)
    assert r.headers["upload-length"] == str(len(data)) and "upload-defer-length" not in r.headers
    r = patch(cluster, location, 2 * CHUNK, data[2 * CHUNK:], **{"Upload-Length": "999999999"})
    assert r.status_code == 409 and r.json()["error"] == "conflict"  # MUST NOT change
    r = patch(cluster, location, 2 * CHUNK, data[2 * CHUNK:], **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    assert state(api, sid)["state"] == "completed"
    assert api.get(f"sessions/{sid}/replay").content == data


def test_a_deferred_length_may_be_declared_by_an_empty_last_patch(cluster: Cluster,
                                                                 api: httpx.Client) -> None:
    location = create(api, None)
    assert patch(cluster, location, 0, b"recorded").status_code == 204
    r = patch(cluster, location, 8, b"", **{"Upload-Length": "8"})
    assert r.status_code == 204 and r.headers["upload-offset"] == "8"
    assert state(api, sid_of(location))["state"] == "completed"


# -- creation-with-upload ------------------------------------------------------------------------

def test_creation_with_upload_stores_the_body_and_answers_its_offset(
        cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(CHUNK + 50, 4)
    r = api.post("sessions", content=data[:CHUNK],
                 headers={**TUS, **STREAM, "Upload-Length": str(len(data))})
    assert r.status_code == 201 and r.headers["upload-offset"] == str(CHUNK)
    location = r.headers["location"]
    assert patch(cluster, location, CHUNK, data[CHUNK:]).status_code == 204
    assert api.get(f"sessions/{sid_of(location)}/replay").content == data


def test_creation_with_a_wrong_body_type_is_415_and_creates_nothing(api: httpx.Client) -> None:
    tag = f"w{datetime.now(UTC).timestamp():.6f}".replace(".", "-")
    r = api.post("sessions", content=b"{}", headers={
        **TUS, "Content-Type": "application/json", "Upload-Length": "5",
        "Upload-Metadata": metadata({"probe": tag})})
    assert r.status_code == 415
    assert api.get("sessions", params={"label": f"probe:{tag}"}).json()["items"] == []


# -- checksum ------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_a_matching_checksum_is_accepted(cluster: Cluster, api: httpx.Client,
                                         algorithm: str) -> None:
    location = create(api, 11)
    digest = hashlib.new(algorithm, b"hello world").digest()
    r = patch(cluster, location, 0, b"hello world",
              **{"Upload-Checksum": f"{algorithm} {b64(digest)}"})
    assert r.status_code == 204 and r.headers["upload-offset"] == "11"


def test_a_checksum_mismatch_is_460_and_the_offset_does_not_move(cluster: Cluster,
                                                                 api: httpx.Client) -> None:
    location = create(api, 2 * CHUNK)
    data = session_bytes(2 * CHUNK, 5)
    wrong = hashlib.sha1(data[:-1]).digest()  # noqa: S324 - the tus checksum extension's MUST
    r = patch(cluster, location, 0, data, **{"Upload-Checksum": f"sha1 {b64(wrong)}"})
    assert r.status_code == 460 and r.json()["error"] == "checksum_mismatch"
    assert head(cluster, location).headers["upload-offset"] == "0"
    with cluster.storage_internal() as storage:
        assert storage.get(f"sessions/{sid_of(location)}/chunks").json()["items"] == []


@pytest.mark.parametrize("value", ["crc32 AAAAAA==", "sha512 " + b64(b"x" * 64), "sha1 !!"])
def test_an_unsupported_checksum_is_400_and_stores_nothing(cluster: Cluster, api: httpx.Client,
                                                           value: str) -> None:
    location = create(api, 5)
    r = patch(cluster, location, 0, b"hello", **{"Upload-Checksum": value})
    assert r.status_code == 400
    assert state(api, sid_of(location))["offset"] == 0


# -- termination ---------------------------------------------------------------------------------

def test_termination_crypto_erases_and_answers_204_then_the_url_is_gone(
        cluster: Cluster, api: httpx.Client) -> None:
    location = create(api, 2 * CHUNK)
    sid = sid_of(location)
    assert patch(cluster, location, 0, session_bytes(CHUNK, 6)).status_code == 204
    assert cluster.chunk_file(sid, 0).exists()
    with cluster.client(base="") as c:
        r = c.delete(location, headers=TUS)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["tus-resumable"] == "1.0.0"
    assert state(api, sid)["state"] == "deleted"
    with cluster.storage_internal() as storage:
        assert storage.get(f"sessions/{sid}").json()["wrapped_key"] is None
    assert not cluster.chunk_file(sid, 0).exists()
    assert head(cluster, location).status_code == 410
    r = patch(cluster, location, CHUNK, b"more")
    assert r.status_code == 410 and r.json()["error"] == "session_deleted"


def test_termination_needs_the_token(cluster: Cluster, api: httpx.Client) -> None:
    location = create(api, 5)
    with cluster.client(auth=False, base="") as c:
        assert c.delete(location, headers=TUS).status_code == 401
    assert state(api, sid_of(location))["state"] == "recording"


# -- expiration ----------------------------------------------------------------------------------

def test_upload_expires_is_on_creation_every_patch_and_head(cluster: Cluster,
                                                            api: httpx.Client) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    r = api.post("sessions", headers={**TUS, "Upload-Length": "10"})
    location = r.headers["location"]
    answers = [r, patch(cluster, location, 0, b"hello"), head(cluster, location)]
    after = datetime.now(UTC) + timedelta(seconds=1)
    for answer in answers:
        moment = expiry(answer.headers["upload-expires"])
        assert before + timedelta(seconds=IDLE_DEADLINE) <= moment
        assert moment <= after + timedelta(seconds=IDLE_DEADLINE)


# -- completion and the two styles on one session ------------------------------------------------

def test_reaching_the_declared_length_finalizes_as_finalize_does(cluster: Cluster,
                                                                 api: httpx.Client,
                                                                 node: dict[str, str]) -> None:
    data = session_bytes(3 * CHUNK + 321, 7)
    location = create(api, len(data))
    sid = sid_of(location)
    assert patch(cluster, location, 0, data[:2 * CHUNK]).status_code == 204
    assert state(api, sid)["state"] == "recording"
    assert patch(cluster, location, 2 * CHUNK, data[2 * CHUNK:]).status_code == 204
    done = state(api, sid)
    assert done["state"] == "completed" and done["root_hash"]
    manifest = api.get(f"sessions/{sid}/manifest").json()
    assert manifest["plaintext_size"] == len(data) and manifest["chunk_count"] == 4
    assert api.post(f"sessions/{sid}/finalize").json() == done  # already what finalize makes
    report = api.post(f"sessions/{sid}/verify").json()
    assert report["ok"] and report["signature_ok"] and report["root_ok"]
    assert api.get(f"sessions/{sid}/replay").content == data
    assert node["verifier_key"]


def test_a_patch_past_the_declared_length_is_413_and_stores_nothing(cluster: Cluster,
                                                                   api: httpx.Client) -> None:
    location = create(api, 10)
    r = patch(cluster, location, 0, b"0123456789X")
    assert r.status_code == 413
    assert state(api, sid_of(location))["offset"] == 0
    assert patch(cluster, location, 0, b"0123456789").status_code == 204


def test_a_chunked_body_past_the_declared_length_is_stopped_at_the_length(
        cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(2 * CHUNK, 9)

    def body() -> Iterator[bytes]:  # no Content-Length: the server cannot refuse it up front
        for start in range(0, len(data), 64 * 1024):
            yield data[start:start + 64 * 1024]

    location = create(api, CHUNK + 10)
    r = patch(cluster, location, 0, body())
    assert r.status_code == 413
    offset = state(api, sid_of(location))["offset"]
    assert isinstance(offset, int) and offset <= CHUNK + 10
    r = patch(cluster, location, offset, data[offset:CHUNK + 10])
    assert r.status_code == 204 and state(api, sid_of(location))["state"] == "completed"
    assert api.get(f"sessions/{sid_of(location)}/replay").content == data[:CHUNK + 10]


def test_a_json_api_session_with_a_declared_length_completes_at_it(api: httpx.Client) -> None:
    r = api.post("sessions", json={"labels": {"user": "bob"}, "upload_length": 8})
    assert r.status_code == 201 and r.json()["upload_length"] == 8
    sid = r.json()["id"]
    r = api.patch(f"sessions/{sid}/upload", content=b"12345678",
                  headers={**STREAM, "Upload-Offset": "0"})
    assert r.status_code == 200 and r.json() == {"offset": 8, "chunk_count": 1}
    assert state(api, sid)["state"] == "completed"
    assert api.post(f"sessions/{sid}/verify").json()["ok"]


def test_the_json_api_and_tus_share_one_session(cluster: Cluster, api: httpx.Client) -> None:
    data = session_bytes(2 * CHUNK + 9, 8)
    location = create(api, len(data), **{"Upload-Metadata": metadata({"user": "alice"})})
    sid = sid_of(location)
    r = api.patch(f"sessions/{sid}/upload", content=data[:CHUNK],
                  headers={**STREAM, "Upload-Offset": "0"})  # the JSON API, as the CLI sends it
    assert r.status_code == 200 and r.json()["offset"] == CHUNK
    assert api.get(f"sessions/{sid}/upload").json()["offset"] == CHUNK
    assert head(cluster, location).headers["upload-offset"] == str(CHUNK)
    r = api.patch(f"sessions/{sid}/upload", content=data[CHUNK:] + b"!",
                  headers={**STREAM, "Upload-Offset": str(CHUNK)})
    assert r.status_code == 413  # the declared length binds the JSON API too
    assert patch(cluster, location, CHUNK, data[CHUNK:]).status_code == 204
    assert state(api, sid)["state"] == "completed"
    assert api.get(f"sessions/{sid}/replay").content == data
    assert api.post(f"sessions/{sid}/verify").json()["ok"]
